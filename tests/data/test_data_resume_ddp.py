"""Exact resume under a real 2-process Lightning run (gloo, CPU, 2 workers per rank).

An uninterrupted run of 6 steps saves a checkpoint after step 3 (while Lightning has
already prefetched step 4's batch); a second run resumes from it. Each rank records
a fingerprint of every batch its training_step receives. The resumed run must see
exactly steps 4..6 of the uninterrupted run, on both ranks, and the two ranks never
see the same document row.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from test_data_fixtures import chat_corpus, text_corpus, tiny_tokenizer

from tide_lightning.data import DistillDataModule, SourceSpec


class Recorder(L.LightningModule):
    """Trains one scalar and writes the rows of every batch it sees to a file."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.out_dir = out_dir

    def training_step(self, batch, batch_idx):
        rows = batch["input_ids"].tolist()
        path = Path(self.out_dir) / f"rank{self.global_rank}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps({"step": self.global_step, "rows": rows}) + "\n")
        return self.w * batch["maskable"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _datamodule(corpus: Path) -> DistillDataModule:
    sources = [
        SourceSpec("jsonl", str(corpus / "text.jsonl"), weight=2.0),
        SourceSpec("jsonl", str(corpus / "chat.jsonl"), weight=1.0),
    ]
    return DistillDataModule(
        sources, tiny_tokenizer(), max_length=64, block_size=8, batch_size=2, num_workers=2, seed=3
    )


def _fit(corpus: Path, out: Path, max_steps: int, ckpt_dir: Path | None, resume: str | None):
    callbacks = []
    if ckpt_dir is not None:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1, filename="{step}"
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_steps=max_steps,
        callbacks=callbacks,
        enable_checkpointing=ckpt_dir is not None,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Recorder(str(out)), datamodule=_datamodule(corpus), ckpt_path=resume)


def _rows(out: Path, rank: int) -> list:
    lines = (out / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["rows"] for line in lines]


@pytest.mark.timeout(300)
def test_resume_two_ranks_two_workers_matches_uninterrupted(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text_corpus(corpus / "text.jsonl", 60)
    chat_corpus(corpus / "chat.jsonl", 30)
    with open(corpus / "text.jsonl", "ab") as f:  # bad lines mixed in
        f.write(b"{not json\n\xff\xfe bad bytes\n" + json.dumps({"text": "  "}).encode() + b"\n")
    full, resumed, ckpts = tmp_path / "full", tmp_path / "resumed", tmp_path / "ckpt"
    full.mkdir()
    resumed.mkdir()
    _fit(corpus, full, 6, ckpts, None)
    _fit(corpus, resumed, 6, None, str(ckpts / "step=3.ckpt"))
    for rank in (0, 1):
        want, got = _rows(full, rank), _rows(resumed, rank)
        assert len(want) == 6
        assert got == want[3:]
    seen0 = {tuple(r) for b in _rows(full, 0) for r in b}
    seen1 = {tuple(r) for b in _rows(full, 1) for r in b}
    assert not seen0 & seen1
