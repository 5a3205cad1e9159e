"""The published data handling: concat mixing, the python filter, the held-out carve, epochs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_data_fixtures import tiny_tokenizer, write_jsonl

from tide_lightning.data import DistillDataModule, SourceSpec
from tide_lightning.data.mixing import Mixture, optimizer_steps
from tide_lightning.data.selection import carve_heldout, count_records, prepare_sources
from tide_lightning.data.sources import SkipLog, open_source


def _chat(i: int, reply: str) -> dict:
    return {
        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": reply}]
    }


@pytest.fixture()
def coder(tmp_path):
    records = [
        _chat(i, f"```python\nx = {i}\n```" if i % 3 == 0 else f"plain {i}") for i in range(30)
    ]
    records.append({"messages": "not a list"})  # unreadable: gone from the filtered count
    return write_jsonl(tmp_path / "coder.jsonl", records)


def test_concat_reads_every_document_once_per_epoch_across_shards():
    mix = Mixture([7, 3, 5], [1.0, 1.0, 1.0], seed=2, mode="concat")
    shards, total = 3, 15
    seen = []
    for shard in range(shards):
        per_shard = len(range(shard, total, shards))
        seen += [mix.pick(shard, shards, d, [0, 0, 0]) for d in range(per_shard)]
    assert sorted(seen) == [(s, i) for s, n in enumerate([7, 3, 5]) for i in range(n)]
    # The next epoch is a different order of the same documents.
    second = [mix.pick(0, 1, d, [0, 0, 0]) for d in range(total, 2 * total)]
    first = [mix.pick(0, 1, d, [0, 0, 0]) for d in range(total)]
    assert sorted(second) == sorted(first) and second != first


def test_concat_samples_sources_in_proportion_to_size():
    mix = Mixture([900, 100], [1.0, 50.0], seed=0, mode="concat")
    sources = np.array([mix.pick(0, 1, d, [0, 0])[0] for d in range(1000)])
    assert (sources == 1).sum() == 100  # weights are ignored: exactly the size share


def test_weighted_pick_matches_the_old_reading():
    mix = Mixture([5, 5], [3.0, 1.0], seed=1)
    taken = [0, 0]
    for d in range(40):
        s, doc = mix.pick(2, 4, d, taken)
        assert s == mix.source_of_draw(2, d) and doc == mix.document(s, 2 + taken[s] * 4)
        taken[s] += 1


def test_unknown_mixing_mode_is_refused():
    with pytest.raises(ValueError, match="concat"):
        Mixture([3], [1.0], seed=0, mode="interleave")


def test_python_filter_keeps_replies_that_mention_python(coder):
    (train,), held = prepare_sources(
        [SourceSpec("jsonl", str(coder), assistant_contains="python")], 10**6
    )
    assert held == [] and len(train) == 10
    replies = [train.read(i, SkipLog()).messages[-1]["content"] for i in range(len(train))]
    assert all("python" in r for r in replies)
    with pytest.raises(ValueError, match="'rust'"):
        prepare_sources([SourceSpec("jsonl", str(coder), assistant_contains="rust")], 10**6)


def test_heldout_carve_is_deterministic_disjoint_and_five_percent(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [_chat(i, f"a{i}") for i in range(200)])
    source = open_source(SourceSpec("jsonl", str(path)))
    train, held = carve_heldout(source, 0.05, seed=42, number=0)
    assert len(held) == 10 and len(train) == 190
    assert not set(train.indices) & set(held.indices)
    assert sorted([*train.indices, *held.indices]) == list(range(200))
    again_train, again_held = carve_heldout(source, 0.05, seed=42, number=0)
    assert np.array_equal(again_held.indices, held.indices)
    other = carve_heldout(source, 0.05, seed=42, number=1)[1]
    assert not np.array_equal(other.indices, held.indices)


def test_datamodule_validates_on_the_heldout_share(tmp_path):
    tok = tiny_tokenizer()
    path = write_jsonl(tmp_path / "c.jsonl", [_chat(i, f"answer {i}") for i in range(60)])
    dm = DistillDataModule(
        [SourceSpec("jsonl", str(path))], tok, max_length=32, block_size=8, batch_size=2,
        num_workers=0, val_batches=2, heldout_fraction=0.1, mixing="concat",
    )  # fmt: skip
    dm.setup("fit")
    train, held = dm.prepared_sources()
    assert count_records(train) == 54 and count_records(held) == 6
    assert len(list(dm.val_dataloader())) == 2
    # Training reads only training documents: the first epoch is exactly the 54.
    stream = dm.train_stream
    read = {stream.mixture.pick(0, 1, d, [0])[1] for d in range(54)}
    assert {int(train[0].indices[i]) for i in read} == set(train[0].indices.tolist())
    batch = next(itertools.islice(dm.train_dataloader(), 1))
    assert batch["input_ids"].shape[0] == 2


@pytest.mark.parametrize(
    ("records", "epochs", "batch", "world", "accum", "steps"),
    [
        (1000, 3, 10, 8, 1, 39),  # ceil(1000/8) = 125 -> 13 batches -> 39
        (1000, 2, 8, 8, 1, 32),  # 125 -> 16 batches
        (1001, 1, 8, 8, 1, 16),  # 126 -> 16
        (1000, 1, 8, 8, 3, 5),  # 16 // 3
        (10, 0.5, 8, 8, 4, 1),  # at least one step
        (64, 1.5, 8, 1, 1, 12),
    ],
)
def test_optimizer_steps_counts_a_distributed_epoch(records, epochs, batch, world, accum, steps):
    assert optimizer_steps(records, epochs, batch, world, accum) == steps


def test_optimizer_steps_refuses_empty_data():
    with pytest.raises(ValueError, match="records=0"):
        optimizer_steps(0, 1, 8, 8)


@pytest.mark.parametrize("workers", [0, 2])
def test_concat_stream_resumes_exactly(tmp_path, workers):
    from test_data_fixtures import chat_corpus, text_corpus
    from test_data_stream import _merge, _run

    text_corpus(tmp_path / "text.jsonl", 30)
    chat_corpus(tmp_path / "chat.jsonl", 20)
    tok = tiny_tokenizer()

    def dm():
        sources = [
            SourceSpec("jsonl", str(tmp_path / "text.jsonl")),
            SourceSpec("jsonl", str(tmp_path / "chat.jsonl")),
        ]
        return DistillDataModule(
            sources, tok, max_length=48, block_size=8, batch_size=3, num_workers=workers,
            seed=5, mixing="concat",
        )  # fmt: skip

    full = [_run(dm(), r, 2, 8)[0] for r in (0, 1)]
    first = [_run(dm(), r, 2, 3) for r in (0, 1)]
    state = _merge([s for _, s in first])
    resumed = [_run(dm(), r, 2, 5, state)[0] for r in (0, 1)]
    for r in (0, 1):
        assert first[r][0] == full[r][:3] and resumed[r] == full[r][3:]


def test_a_carve_that_leaves_nothing_is_a_user_error(tmp_path):
    from tide_lightning.errors import UserError

    path = write_jsonl(tmp_path / "one.jsonl", [_chat(0, "a")])
    with pytest.raises(UserError, match="leaves none to train on"):
        carve_heldout(open_source(SourceSpec("jsonl", str(path))), 0.05, seed=0, number=0)
