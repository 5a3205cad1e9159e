"""Sources: every reader, bad input skipped and counted, missing/empty fails at start."""

from __future__ import annotations

import json
import logging
import sys
import types

import pytest
from test_data_fixtures import write_jsonl

from tide_lightning.data.sources import SkipLog, SourceSpec, open_source


def _read_all(src, skips):
    return [src.read(i, skips) for i in range(len(src))]


def test_jsonl_bad_input_skipped_counted_and_named(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": "good one"},  # line 1
            "{not json",  # line 2
            b'{"text": "caf\xe9"}',  # line 3: latin-1 byte, not UTF-8
            {"text": "   \n\t"},  # line 4
            {"body": "no text field"},  # line 5
            "",  # line 6: blank line, not a document
            {"text": "x" * 500},  # line 7: over max_doc_chars
            {"messages": [{"role": "user"}]},  # line 8
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            [1, 2],  # line 10: not an object
        ],
    )
    src = open_source(SourceSpec("jsonl", str(path)), max_doc_chars=100)
    assert len(src) == 9  # blank line not indexed
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        recs = _read_all(src, skips)
    good = [r for r in recs if r is not None]
    assert [r.text for r in good] == ["good one", None]
    assert good[1].messages[1] == {"role": "assistant", "content": "a"}
    assert dict(skips.counts) == {
        "malformed_json": 1,
        "non_utf8": 1,
        "empty": 1,
        "missing_field": 2,
        "too_long": 1,
        "bad_messages": 1,
    }
    assert f"{path}:2" in caplog.text and f"{path}:3" in caplog.text and f"{path}:5" in caplog.text
    assert f"{path}:10" not in caplog.text  # the second missing_field: counted, not warned


def test_warnings_once_per_reason(tmp_path, caplog):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{oops"] * 20 + [{"text": " "}] * 3)
    src = open_source(SourceSpec("jsonl", str(path)))
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        _read_all(src, skips)
    assert skips.counts == {"malformed_json": 20, "empty": 3}
    assert caplog.text.count("skipped record") == 2
    assert f"{path}:1:" in caplog.text and f"{path}:21" in caplog.text


def test_explicit_field(tmp_path):
    path = write_jsonl(tmp_path / "f.jsonl", [{"content": "hello", "text": "ignored"}])
    rec = open_source(SourceSpec("jsonl", str(path), field="content")).read(0, SkipLog())
    assert rec.text == "hello" and rec.where.endswith("f.jsonl:1")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "text", "code"])
def test_missing_path_fails_naming_it(tmp_path, kind):
    missing = tmp_path / "nope" / "data.x"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        open_source(SourceSpec(kind, str(missing)))


def test_empty_sources_fail_naming_path(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl"):
        open_source(SourceSpec("jsonl", str(empty)))
    with pytest.raises(FileNotFoundError, match=r"\*\.md"):
        open_source(SourceSpec("text", str(tmp_path / "*.md")))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        open_source(SourceSpec("code", str(tmp_path / "d")))


def test_parquet_rows_across_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": [f"row {i}" if i != 3 else "" for i in range(10)]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
    src = open_source(SourceSpec("parquet", str(tmp_path / "*.parquet")))
    skips = SkipLog()
    texts = [r.text if r else None for r in _read_all(src, skips)]
    assert texts == [f"row {i}" if i != 3 else None for i in range(10)]
    assert skips.counts["empty"] == 1
    assert src.where(5).endswith("a.parquet:6")


def test_text_glob_and_code_directory(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    return 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("x = 2\n")
    (tmp_path / "pkg" / "README.md").write_text("not code")
    (tmp_path / "pkg" / "bad.py").write_bytes(b"\xff\xfe\x00")
    code = open_source(SourceSpec("code", str(tmp_path / "pkg")))
    skips = SkipLog()
    assert [r.text if r else None for r in _read_all(code, skips)] == [
        "def f():\n    return 1\n",
        None,
        "x = 2\n",
    ]
    assert skips.counts["non_utf8"] == 1
    text = open_source(SourceSpec("text", str(tmp_path / "pkg" / "**" / "*.py")))
    assert len(text) == 3


def test_hf_source_through_datasets(monkeypatch):
    fake = types.ModuleType("datasets")
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    fake.load_dataset = lambda name, split: rows if name == "org/set" else []
    monkeypatch.setitem(sys.modules, "datasets", fake)
    src = open_source(SourceSpec("hf", "org/set"))
    assert len(src) == 1 and src.read(0, SkipLog()).messages[0]["content"] == "q"
    assert src.where(0) == "org/set[train]:0"
    with pytest.raises(ValueError, match="other/set"):
        open_source(SourceSpec("hf", "other/set"))


def test_spec_validation():
    with pytest.raises(ValueError, match="kind"):
        SourceSpec("csv", "x")
    with pytest.raises(ValueError, match="weight"):
        SourceSpec("jsonl", "x", weight=0)
    assert json.dumps(SourceSpec("jsonl", "x").__dict__)  # plain, serialisable fields
