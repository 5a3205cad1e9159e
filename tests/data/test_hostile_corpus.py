"""A generated hostile corpus: every good record is used exactly once per epoch, every bad
one is counted under its reason, in both pipelines, with two dataloader workers.

The corpus is a ``jsonl`` folder: a file with a UTF-8 BOM, records that crash a plain
reader (a 5,000-digit integer, JSON nested 100,000 deep, a lone ``\\ud800`` escape, bytes
that are not UTF-8), records of the wrong type (``{"messages": "not a list"}``,
``{"text": 12}``), a 12.5 MB record, one the tokenizer raises on, and a ``.txt`` file and a
hidden folder that the source must not read at all.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path

import pytest

from tide_lightning.data import DistillDataModule, SourceSpec
from tide_lightning.data.examples import ExampleBuilder
from tide_lightning.data.mixing import Mixture
from tide_lightning.data.sources import SkipLog, open_source

HUGE = 12_500_000  # characters of the oversized record (over the 1,000,000 default)
TAG = re.compile(r"good(\d+)z")
# Expected skip reason of each bad record, in the order they are written.
BAD = [
    ('{"text": "int", "n": ' + "7" * 5000 + "}", "malformed_json"),
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "malformed_json"),
    ('{"text": "lone \\ud800 surrogate"}', "non_utf8"),
    (b'{"text": "latin-1 caf\xe9"}', "non_utf8"),
    ('{"messages": "not a list"}', "bad_messages"),
    ('{"text": 12}', "bad_field"),
    ('{"text": ["a", "list"]}', "bad_field"),
    ('{"body": "no document field"}', "missing_field"),
    ("{broken json", "malformed_json"),
    (json.dumps({"text": "y" * HUGE}), "too_long"),
    ('{"text": "boom: the tokenizer raises on this one"}', "tokenize_error"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\\udfff"}]}', "non_utf8"),
]  # fmt: skip


def _good(i: int) -> str:
    if i % 3 == 2:  # every third good record is a chat; the tag sits in the question
        msgs = [
            {"role": "user", "content": f"question good{i}z about the fox"},
            {"role": "assistant", "content": "the dog"},
        ]
        return json.dumps({"messages": msgs})
    return json.dumps({"text": f"good{i}z the quick brown fox"})


def _layout(n_good: int) -> list[tuple[str | bytes, str | None]]:
    """Goods and bads in pairs (g g b b g g ... g g): with two shards reading alternate
    documents, each shard holds half the good records and all of its bad records come
    before its last good one, so one epoch's batches carry every skip count."""
    assert n_good % 2 == 0 and len(BAD) % 2 == 0
    docs: list[tuple[str | bytes, str | None]] = []
    goods, bads = iter(range(n_good)), iter(BAD)
    for pair in itertools.count():
        docs += [(_good(next(goods)), None), (_good(next(goods)), None)]
        if 2 * (pair + 1) == n_good:
            return docs
        docs += list(itertools.islice(bads, 2))


def write_hostile_corpus(root: Path, n_good: int = 16) -> tuple[Path, list[str | None]]:
    """The corpus folder, and the skip reason of each indexed document (None = good)."""
    docs = _layout(n_good)
    assert sum(r is None for _, r in docs) == n_good and sum(r is not None for _, r in docs) == len(
        BAD
    )
    folder = root / "corpus"
    (folder / ".cache").mkdir(parents=True)
    split = len(docs) // 2 + 1  # b.jsonl starts mid-pair: reasons cross file boundaries
    for name, part, bom in (("a.jsonl", docs[:split], True), ("b.jsonl", docs[split:], False)):
        with open(folder / name, "wb") as f:
            f.write(b"\xef\xbb\xbf" if bom else b"")
            for line, _ in part:
                f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
            f.write(b"\n")  # a trailing blank line is not a document
    # Not the kind's extension / hidden: must not be indexed at all.
    (folder / "notes.txt").write_text('{"text": "good999z from a txt file"}\n')
    (folder / ".cache" / "c.jsonl").write_text('{"text": "good998z hidden"}\n')
    return folder, [r for _, r in docs]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture()
def boom(monkeypatch):
    """The tokenizer (and the cross alignment) raise on any record mentioning "boom"."""
    tokens, example = ExampleBuilder.tokens, ExampleBuilder.example

    def check(record):
        if "boom" in (record.text or ""):
            raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(ExampleBuilder, "tokens", lambda b, r: check(r) or tokens(b, r))
    monkeypatch.setattr(ExampleBuilder, "example", lambda b, r: check(r) or example(b, r))


def test_source_reads_the_folder_and_counts_every_bad_record(hostile, caplog):
    folder, reasons = hostile
    src = open_source(SourceSpec("jsonl", str(folder)))
    assert [f.name for f in src.files] == ["a.jsonl", "b.jsonl"]  # no .txt, no hidden folder
    assert len(src) == len(reasons)
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        records = [src.read(i, skips) for i in range(len(src))]
    tokenizer_stage = {"tokenize_error"}  # the source passes it on; the tokenizer fails
    for record, reason in zip(records, reasons, strict=True):
        assert (record is None) == (reason is not None and reason not in tokenizer_stage)
    assert TAG.search(records[0].text).group(1) == "0"  # the BOM line is a good record
    expected = {r: reasons.count(r) for r in set(reasons) - {None} - tokenizer_stage}
    assert dict(skips.counts) == expected
    for reason in expected:  # warned once each, with file and line
        assert caplog.text.count(f"skipped record ({reason}) at {folder}") == 1
    assert re.search(rf"\(non_utf8\) at {folder}/a\.jsonl:\d+: lone surrogate", caplog.text)


def test_max_doc_chars_is_the_limit(hostile):
    folder, reasons = hostile
    src = open_source(SourceSpec("jsonl", str(folder)), max_doc_chars=HUGE)
    big = reasons.index("too_long")
    record = src.read(big, SkipLog())
    assert record is not None and len(record.text) == HUGE


def _decoded_tags(tokenizer, batches) -> list[int]:
    tags = []
    for batch in batches:
        assert batch["input_ids"].shape[0] == 1
        found = TAG.findall(tokenizer.decode(batch["input_ids"][0]))
        assert len(found) == 1, found
        tags.append(int(found[0]))
    return tags


def _datamodule(folder, tokenizer, pipeline, teacher, val_batches):
    spec = SourceSpec("jsonl", str(folder))
    return DistillDataModule(
        [spec], tokenizer, val_sources=[spec], teacher_tokenizer=teacher, pipeline=pipeline,
        max_length=64, teacher_max_length=96, block_size=8, batch_size=1, num_workers=2,
        seed=3, pack_text=False, val_batches=val_batches,
    )  # fmt: skip


@pytest.mark.parametrize("pipeline", ["shared", "cross"])
def test_every_good_record_once_per_epoch_every_bad_counted(
    hostile, boom, small_bpe, small_unigram, pipeline
):
    folder, reasons = hostile
    good = [i for i, r in enumerate(reasons) if r is None]
    teacher = small_unigram if pipeline == "cross" else None
    dm = _datamodule(folder, small_bpe, pipeline, teacher, val_batches=len(good))
    dm.setup("fit")
    expected_counts = {r: reasons.count(r) for r in set(reasons) - {None}}

    # Validation (file order, fixed size): one epoch exactly, every skip counted once.
    val = list(dm.val_dataloader())
    for batch in val:
        dm.record_batch(batch)
    assert sorted(_decoded_tags(small_bpe, val)) == list(range(len(good)))
    assert {r: n for r, n in dm.skip_counts("val").items() if n} == expected_counts

    # Training (shuffled, endless): worker w plays shard w, which reads positions
    # w, w + 2, ... of the epoch's permutation; its first batches are the good records
    # among them, in that order, and the two shards together hold each good one once.
    mixture = Mixture([len(reasons)], [1.0], seed=3)
    order = [mixture.document(0, p) for p in range(len(reasons))]
    tag_of = {doc: n for n, doc in enumerate(good)}
    expected = [[tag_of[d] for d in order[w::2] if reasons[d] is None] for w in (0, 1)]
    n = 2 * max(map(len, expected))
    batches = list(itertools.islice(dm.train_dataloader(), n))
    for batch in batches:
        dm.record_batch(batch)
    tags = _decoded_tags(small_bpe, batches)
    for w in (0, 1):
        assert tags[w::2][: len(expected[w])] == expected[w]
    assert sorted(expected[0] + expected[1]) == list(range(len(good)))
    # Every bad record a shard passed before its last good one of the epoch is counted.
    passed = [
        reasons[d]
        for w in (0, 1)
        for d in order[w::2][: max(k for k, d in enumerate(order[w::2]) if reasons[d] is None)]
    ]
    counted = dm.skip_counts("train")
    for reason in expected_counts:
        assert counted[reason] >= passed.count(reason)


def test_max_doc_chars_config_key_is_range_checked():
    from tide_lightning.config import ConfigError, load_config

    assert load_config(overrides=["data.max_doc_chars=20000000"]).data.max_doc_chars == 20_000_000
    with pytest.raises(ConfigError, match=r"data\.max_doc_chars must be > 0, got -1"):
        load_config(overrides=["data.max_doc_chars=-1"])
