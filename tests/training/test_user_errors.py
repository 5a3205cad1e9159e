"""User errors of ``fit`` through the real CLI: one line ``error: <what, which file/key>``,
exit status 2, no traceback, and nothing trained (no tokenizer) before the check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tide_lightning.cli import main
from tide_lightning.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"


def _fit(run_dir: Path, *overrides: str, debug: bool = False) -> int:
    argv = ["fit", "--config", str(CONF / "tiny.yaml"), f"run_dir={run_dir}", *overrides]
    return main(["--debug", *argv] if debug else argv)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _source(kind: str, path: Path | str) -> str:
    return f"data.sources=[{{kind: {kind}, path: '{path}'}}]"


def test_empty_source(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert _fit(tmp_path / "run", _source("jsonl", empty)) == 2
    assert _one_line_error(capsys) == f"error: data source jsonl:{empty} holds no documents"


def test_missing_source(tmp_path, capsys):
    assert _fit(tmp_path / "run", _source("jsonl", tmp_path / "nope.jsonl")) == 2
    assert f"{tmp_path / 'nope.jsonl'}: no such file" in _one_line_error(capsys)


def test_unreadable_source(tmp_path, capsys, monkeypatch):
    # Tests may run as root, which reads any file: the refusal is simulated at open().
    import tide_lightning.data.sources as sources

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sources, "_jsonl_line_offsets", refuse)
    data = tmp_path / "locked.jsonl"
    data.write_text('{"text": "hello"}\n')
    assert _fit(tmp_path / "run", _source("jsonl", data)) == 2
    assert (
        _one_line_error(capsys)
        == f"error: data source jsonl:{data}: cannot read (Permission denied)"
    )


def test_text_file_named_parquet(tmp_path, capsys):
    fake = tmp_path / "table.parquet"
    fake.write_text("this is plain text, not a Parquet file\n")
    assert _fit(tmp_path / "run", _source("parquet", fake)) == 2
    assert f"error: data source parquet:{fake}: not a Parquet file" in _one_line_error(capsys)


def test_unknown_source_kind(tmp_path, capsys):
    assert _fit(tmp_path / "run", _source("csv", tmp_path / "a.csv")) == 2
    err = _one_line_error(capsys)
    assert "kind" in err and "csv" in err


def test_negative_batch_size_fails_before_tokenizer_training(tmp_path, capsys):
    assert _fit(tmp_path / "run", "data.batch_size=-4") == 2
    assert "data.batch_size" in _one_line_error(capsys)
    assert not (tmp_path / "run" / "student_tokenizer").exists()


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="holds no documents"):
        _fit(tmp_path / "run", _source("jsonl", empty), debug=True)
    monkeypatch.setenv("TIDE_DEBUG", "1")
    with pytest.raises(UserError, match="holds no documents"):
        _fit(tmp_path / "run", _source("jsonl", empty))


def test_no_usable_record_in_worker_processes(tmp_path, capsys):
    data = tmp_path / "all_bad.jsonl"
    data.write_text('{broken\n{"text": 5}\n')
    overrides = [_source("jsonl", data), "data.num_workers=2", "trainer.max_steps=1"]
    assert _fit(tmp_path / "run", *overrides) == 2
    err = _one_line_error(capsys)
    assert err.startswith("error: no usable document in ") and str(data) in err
    assert "malformed_json" in err and "bad_field" in err


def test_validate_with_a_broken_or_missing_checkpoint(tmp_path, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04 torn")
    argv = ["validate", "--config", str(CONF / "tiny.yaml"), f"run_dir={tmp_path / 'run'}"]
    assert main([*argv, "--ckpt", str(broken)]) == 2
    assert _one_line_error(capsys).startswith(f"error: resume checkpoint {broken} cannot be loaded")
    assert main([*argv, "--ckpt", str(tmp_path / "nope.ckpt")]) == 2
    assert (
        _one_line_error(capsys)
        == f"error: resume checkpoint {tmp_path / 'nope.ckpt'}: no such file"
    )
