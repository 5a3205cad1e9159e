"""Mixture, packing, sharding and resume of the stream, with ranks simulated in-process."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_data_fixtures import chat_corpus, text_corpus, tiny_tokenizer, write_jsonl
from torch.utils.data import DataLoader

from tide_lightning.data import DistillDataModule, SourceSpec
from tide_lightning.data.examples import text_tokens
from tide_lightning.data.mixing import Mixture
from tide_lightning.data.sources import SkipLog
from tide_lightning.errors import UserError


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def corpus(tmp_path):
    text_corpus(tmp_path / "text.jsonl", 40)
    chat_corpus(tmp_path / "chat.jsonl", 25)
    with open(tmp_path / "text.jsonl", "ab") as f:
        f.write(b"{broken\n\xc3\x28\n")
    return tmp_path


def _dm(tok, corpus, workers=2, **kw):
    sources = [
        SourceSpec("jsonl", str(corpus / "text.jsonl"), weight=2.0),
        SourceSpec("jsonl", str(corpus / "chat.jsonl"), weight=1.0),
    ]
    args = dict(max_length=48, block_size=8, batch_size=3, num_workers=workers, seed=5)
    args.update(kw)
    return DistillDataModule(sources, tok, **args)


def _run(dm, rank, world, n, state=None):
    """Consume ``n`` batches on one simulated rank; returns the rows and the final state."""
    dm.setup("fit")
    dm.place(rank, world)
    if state is not None:
        dm.load_state_dict(state)
    out = []
    for batch in itertools.islice(dm.train_dataloader(), n):
        dm.record_batch(batch)  # what on_before_batch_transfer does under a Trainer
        out.append(batch["input_ids"].tolist())
    return out, dm.state_dict()


def _merge(states):
    return {**states[0], "rows": [s["rows"][0] for s in states]}


def test_mixture_shards_are_disjoint_and_cover_each_epoch():
    mix = Mixture([10], [1.0], seed=0)
    shards = 4
    seen = [
        [mix.document(0, k + j * shards) for j in range(10 // shards + 1) if k + j * shards < 10]
        for k in range(shards)
    ]
    flat = [d for s in seen for d in s]
    assert sorted(flat) == list(range(10))
    epoch0 = [mix.document(0, q) for q in range(10)]
    epoch1 = [mix.document(0, q) for q in range(10, 20)]
    assert sorted(epoch1) == list(range(10)) and epoch0 != epoch1
    assert [Mixture([10], [1.0], 0, shuffle=False).document(0, q) for q in range(12)] == [
        *range(10),
        0,
        1,
    ]


def test_mixture_weights_and_determinism():
    mix = Mixture([5, 5], [3.0, 1.0], seed=1)
    draws = np.array([mix.source_of_draw(0, d) for d in range(4000)])
    assert abs((draws == 0).mean() - 0.75) < 0.03
    again = Mixture([5, 5], [3.0, 1.0], seed=1)
    assert [again.source_of_draw(0, d) for d in (3999, 5, 2048)] == [
        draws[3999],
        draws[5],
        draws[2048],
    ]
    assert [mix.source_of_draw(1, d) for d in range(50)] != draws[:50].tolist()


def test_packing_keeps_every_token_once_in_order(tok, tmp_path):
    text_corpus(tmp_path / "t.jsonl", 15)
    dm = DistillDataModule(
        [SourceSpec("jsonl", str(tmp_path / "t.jsonl"))], tok, max_length=16, block_size=8,
        batch_size=2, num_workers=0,
    )  # fmt: skip
    rows, _ = _run(dm, 0, 1, 6)
    packed = [t for batch in rows for row in batch for t in row]
    src = dm.train_stream.sources[0]
    mix = dm.train_stream.mixture
    expected = []
    for q in itertools.count():
        rec = src.read(mix.document(0, q), SkipLog())
        expected += text_tokens(tok, rec.text, tok.eos_token_id)
        if len(expected) >= len(packed):
            break
    assert packed == expected[: len(packed)]


def test_ranks_and_workers_see_disjoint_documents(tok, corpus):
    rows = [_run(_dm(tok, corpus), r, 2, 4)[0] for r in (0, 1)]
    seqs = [{tuple(s) for b in rows[r] for s in b} for r in (0, 1)]
    assert not seqs[0] & seqs[1]
    assert len({tuple(s) for b in rows[0] for s in b}) == sum(len(b) for b in rows[0])


@pytest.mark.parametrize("workers,stop", [(2, 3), (2, 4), (0, 5), (3, 7)])
def test_resume_matches_uninterrupted_run(tok, corpus, workers, stop):
    total = 10
    full = [_run(_dm(tok, corpus, workers), r, 2, total)[0] for r in (0, 1)]
    first = [_run(_dm(tok, corpus, workers), r, 2, stop) for r in (0, 1)]
    state = _merge([s for _, s in first])
    resumed = [_run(_dm(tok, corpus, workers), r, 2, total - stop, state)[0] for r in (0, 1)]
    for r in (0, 1):
        assert first[r][0] == full[r][:stop]
        assert resumed[r] == full[r][stop:]


def test_resume_twice_and_skip_counts_survive(tok, corpus):
    full, _ = _run(_dm(tok, corpus), 0, 1, 9)
    a, s1 = _run(_dm(tok, corpus), 0, 1, 3)
    dm = _dm(tok, corpus)
    b, s2 = _run(dm, 0, 1, 3, s1)
    c, _ = _run(_dm(tok, corpus), 0, 1, 3, s2)
    assert a + b + c == full
    assert dm.consumed_batches == 6


def test_resume_with_other_world_size_or_workers_fails(tok, corpus):
    _, state = _run(_dm(tok, corpus), 0, 1, 2)
    with pytest.raises(ValueError, match="world size"):
        _run(_dm(tok, corpus), 0, 2, 1, state)
    with pytest.raises(ValueError, match="workers"):
        _run(_dm(tok, corpus, workers=3), 0, 1, 1, state)


def test_skip_counts_exposed(tok, tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "the fox " * 20}, "{bad", {"text": " "}] * 4)
    dm = DistillDataModule(
        [SourceSpec("jsonl", str(tmp_path / "b.jsonl"))], tok, max_length=16, block_size=8,
        batch_size=2, num_workers=0,
    )  # fmt: skip
    _run(dm, 0, 1, 6)
    counts = dm.skip_counts()
    assert counts["malformed_json"] >= 1 and counts["empty"] >= 1
    assert set(counts) >= {"malformed_json", "non_utf8", "empty", "missing_field", "too_long"}


def test_all_bad_source_stops_with_a_message(tok, tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", ["{x"] * 3)
    dm = DistillDataModule(
        [SourceSpec("jsonl", str(tmp_path / "bad.jsonl"))], tok, max_length=16, block_size=8,
        batch_size=2, num_workers=0,
    )  # fmt: skip
    with pytest.raises(UserError, match=r"no usable document .*skipped: malformed_json \d+"):
        _run(dm, 0, 1, 1)


def test_validation_fixed_size_equal_per_rank_and_repeatable(tok, corpus):
    def val_rows(rank):
        dm = _dm(tok, corpus, val_batches=4)
        dm.val_sources = [SourceSpec("jsonl", str(corpus / "chat.jsonl"))]
        dm.setup("validate")
        dm.place(rank, 2)
        loader = dm.val_dataloader()
        assert len(loader) == 4
        out = []
        for b in loader:
            dm.record_batch(b)
            assert "_stream_cursor" not in b
            out.append(b["input_ids"].tolist())
        return out

    r0, r1 = val_rows(0), val_rows(1)
    assert len(r0) == len(r1) == 4  # 2 ranks x 4 x 3 rows <= 25 records
    assert r0 == val_rows(0)
    assert not {tuple(s) for b in r0 for s in b} & {tuple(s) for b in r1 for s in b}


def test_batch_layout(tok, corpus):
    dm = _dm(tok, corpus, workers=0, pad_to_max=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.record_batch(batch)
    assert set(batch) == {"input_ids", "maskable", "attention_mask"}
    assert batch["input_ids"].shape == (3, 48)
    assert not (batch["maskable"] & ~batch["attention_mask"]).any()
    lengths = batch["attention_mask"].sum(1)
    assert (lengths % 8 == 0).all()


def test_block_size_must_divide_max_length(tok, corpus):
    with pytest.raises(ValueError, match="multiple of block_size"):
        _dm(tok, corpus, max_length=50)


def test_datamodule_dataloader_uses_worker_batches(tok, corpus):
    dm = _dm(tok, corpus)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and loader.batch_size is None
    with pytest.raises(TypeError):
        len(loader)  # endless: Lightning must not size epochs from it


def test_cross_pipeline_stream_resumes_exactly(small_bpe, small_unigram, corpus):
    def dm():
        return DistillDataModule(
            [SourceSpec("jsonl", str(corpus / "chat.jsonl")), SourceSpec("jsonl", str(corpus / "text.jsonl"))],
            small_bpe, teacher_tokenizer=small_unigram, pipeline="cross", max_length=64,
            teacher_max_length=80, block_size=8, batch_size=2, num_workers=2, seed=1,
        )  # fmt: skip

    full = [_run(dm(), r, 2, 6)[0] for r in (0, 1)]
    first = [_run(dm(), r, 2, 3) for r in (0, 1)]
    resumed = [_run(dm(), r, 2, 3, _merge([s for _, s in first]))[0] for r in (0, 1)]
    assert resumed == [f[3:] for f in full]
    d = dm()
    d.setup("fit")
    batch = next(iter(d.train_dataloader()))
    d.record_batch(batch)
    assert set(batch) == {
        "input_ids", "maskable", "attention_mask", "teacher_input_ids", "teacher_attention_mask",
        "teacher_maskable", "student_chunk_ids", "teacher_chunk_ids",
    }  # fmt: skip
    assert batch["student_chunk_ids"].shape == batch["input_ids"].shape
    assert (batch["teacher_input_ids"][~batch["teacher_attention_mask"]] == d.teacher_pad_id).all()


def test_version1_data_state_still_loads(tok, corpus):
    """A checkpoint from before skip reasons were stored by name (seven counts) resumes."""
    rows, state = _run(_dm(tok, corpus), 0, 1, 4)
    old = {"rows": [state["rows"][0][:-3]], "workers": state["workers"], "version": 1}
    assert state["rows"][0][-3:] == [0, 0, 0]  # the three reasons added since
    resumed, _ = _run(_dm(tok, corpus), 0, 1, 2, old)
    whole, _ = _run(_dm(tok, corpus), 0, 1, 6)
    assert resumed == whole[4:]
