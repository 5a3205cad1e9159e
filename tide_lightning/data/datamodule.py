"""``DistillDataModule``: the LightningDataModule the trainer plugs in.

It owns three things: building the streams from typed arguments, recording the
data position of every batch a training step *consumes* (in
``on_before_batch_transfer``, which Lightning calls for the batch it is about to
train on, never for the one it prefetched), and saving/restoring that position for
all ranks through ``state_dict``/``load_state_dict`` (stored in the checkpoint).

Training data is endless (every source cycles with a new shuffle per epoch), so all
ranks can always deliver the same number of batches and training is bounded by
``max_steps``; validation has a fixed number of batches per rank. Do not call
``trainer.estimated_stepping_batches`` to size schedules (it instantiates the
loaders early and is meaningless for an endless stream): use ``max_steps``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from tide_lightning.data.examples import ExampleBuilder
from tide_lightning.data.selection import prepare_sources
from tide_lightning.data.sources import SKIP_REASONS, SourceSpec, open_source
from tide_lightning.data.stream import SKIPS_KEY, STREAM_KEY, Cursor, ShardedStream

# Skip reasons of version-1 data states (saved without their names).
_VERSION1_REASONS = SKIP_REASONS[:7]


class DistillDataModule(L.LightningDataModule):
    """Streams, tokenizes and shards the distillation corpora.

    Args:
        sources: training corpora (mixed by weight).
        student_tokenizer: fast Hugging Face tokenizer of the student.
        val_sources: held-out corpora; empty disables validation.
        teacher_tokenizer: teacher tokenizer: cross pipeline, and the shared pipeline's
            aligned teacher view (same vocabulary, its own chat template).
        pipeline: "shared" or "cross".
        max_length: student length L (a multiple of ``block_size``).
        teacher_max_length: teacher length Lt (cross pipeline, aligned teacher view).
        block_size: diffusion block size.
        batch_size: examples per batch per rank.
        num_workers: dataloader workers per rank.
        seed: shuffle and mixture seed (validation uses ``seed + 1`` without shuffling).
        pack_text: pack raw text into full rows (shared pipeline).
        val_batches: validation batches per rank (fixed, equal on every rank).
        pad_to_max: pad every batch to the full lengths (static shapes).
        max_doc_chars: documents longer than this (characters) are skipped and counted
            as ``too_long``.
        eos_id: student EOS id; None takes the tokenizer's.
        pad_id: student pad id; None takes the tokenizer's, else EOS.
        teacher_pad_id: teacher pad id; None takes the teacher tokenizer's, else its EOS.
        mixing: "weighted" (by ``SourceSpec.weight``) or "concat" (in proportion to size,
            each document once per epoch): :mod:`tide_lightning.data.mixing`.
        heldout_fraction: without ``val_sources``, this share of every training source
            is held out for validation (:mod:`tide_lightning.data.selection`); 0: none.
        supervision: chat records: "last_turn" (published) or "all_turns".
        teacher_view: shared pipeline: "same_sequence" or "aligned"
            (:class:`~tide_lightning.data.examples.ExampleBuilder`).
    """

    def __init__(
        self,
        sources: Sequence[SourceSpec],
        student_tokenizer: Any,
        val_sources: Sequence[SourceSpec] = (),
        teacher_tokenizer: Any = None,
        pipeline: str = "shared",
        max_length: int = 512,
        teacher_max_length: int = 0,
        block_size: int = 32,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 0,
        pack_text: bool = True,
        val_batches: int = 8,
        pad_to_max: bool = False,
        max_doc_chars: int = 1_000_000,
        eos_id: int | None = None,
        pad_id: int | None = None,
        teacher_pad_id: int | None = None,
        mixing: str = "weighted",
        heldout_fraction: float = 0.0,
        supervision: str = "last_turn",
        teacher_view: str = "same_sequence",
    ) -> None:
        super().__init__()
        if not sources:
            raise ValueError("DistillDataModule needs at least one training source")
        eos_id = student_tokenizer.eos_token_id if eos_id is None else eos_id
        if eos_id is None:
            raise ValueError("the student tokenizer has no EOS token; pass eos_id")
        self.builder = ExampleBuilder(
            student_tokenizer, max_length, block_size, eos_id, pipeline,
            teacher_tokenizer, teacher_max_length, pack_text, supervision, teacher_view,
        )  # fmt: skip
        self.sources, self.val_sources = list(sources), list(val_sources)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.val_batches, self.pad_to_max, self.max_doc_chars = (
            val_batches,
            pad_to_max,
            max_doc_chars,
        )
        self.pad_id = _first_int(pad_id, student_tokenizer.pad_token_id, eos_id)
        self.teacher_pad_id = None
        if teacher_tokenizer is not None:
            self.teacher_pad_id = _first_int(
                teacher_pad_id, teacher_tokenizer.pad_token_id, teacher_tokenizer.eos_token_id
            )
        self.mixing, self.heldout_fraction = mixing, heldout_fraction
        self._prepared: tuple[list, list] | None = None
        self.train_stream: ShardedStream | None = None
        self.val_stream: ShardedStream | None = None
        self._consumed = 0
        self._cursors: list[list[int]] = []
        self._skips = {"train": Counter(), "val": Counter()}
        self._loaded: dict[str, Any] | None = None

    # ----------------------------------------------------------------- set-up
    def setup(self, stage: str | None = None) -> None:
        """Index the sources (fails here, naming the path, if one is missing or empty)."""
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        if self.train_stream is None and stage in (None, "fit"):
            train, _ = self.prepared_sources()
            self.train_stream = self._stream(train, self.seed, True, None, self.mixing)
            workers = self.train_stream.logical_workers
            self._cursors = [Cursor(taken=[0] * len(self.sources)).to_list()] * workers
        if self.val_stream is None and self.has_validation and stage in (None, "fit", "validate"):
            if self.val_sources:
                held = [open_source(s, self.max_doc_chars) for s in self.val_sources]
            else:
                held = self.prepared_sources()[1]
            self.val_stream = self._stream(held, self.seed + 1, False, self.val_batches)
        self.place(rank, world)

    @property
    def has_validation(self) -> bool:
        """Validation sources were given, or a share of the training ones is held out."""
        return bool(self.val_sources) or self.heldout_fraction > 0

    def prepared_sources(self) -> tuple[list, list]:
        """Training sources (opened, filtered, carved) and the held-out views, built once."""
        if self._prepared is None:
            carve = 0.0 if self.val_sources else self.heldout_fraction
            self._prepared = prepare_sources(self.sources, self.max_doc_chars, carve, self.seed)
        return self._prepared

    def _stream(self, opened, seed, shuffle, num_batches, mixing="weighted") -> ShardedStream:
        # Held-out views of a concat mixture are sampled by size, like their training side.
        concat = self.mixing == "concat"
        weights = [len(s) if concat else s.spec.weight for s in opened]
        return ShardedStream(
            opened, weights, self.builder, self.batch_size, self.pad_id,
            self.teacher_pad_id, seed, shuffle, num_batches, self.num_workers, self.pad_to_max,
            mixing,
        )  # fmt: skip

    def place(self, rank: int, world_size: int) -> None:
        """Set the global rank and world size (done by ``setup`` under a Trainer)."""
        for stream in (self.train_stream, self.val_stream):
            if stream is not None:
                stream.place(rank, world_size)
        self._apply_loaded()

    def train_dataloader(self) -> DataLoader:
        """Endless loader of ready batches (``batch_size=None``: workers batch)."""
        if self.train_stream is None:
            self.setup("fit")
        self._apply_loaded()
        return self._loader(self.train_stream)

    def val_dataloader(self) -> DataLoader | list:
        """Fixed-size loader, ``val_batches`` per rank; [] without validation sources."""
        if self.val_stream is None and self.has_validation:
            self.setup("validate")
        return self._loader(self.val_stream) if self.val_stream is not None else []

    def _loader(self, stream: ShardedStream) -> DataLoader:
        # Tokenizers used in the parent before the fork would otherwise warn in every worker.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    # ------------------------------------------------- consumed-batch tracking
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the data position of a batch about to be trained on, strip metadata."""
        if isinstance(batch, dict):
            self.record_batch(batch)
        return batch

    def record_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Pop the stream metadata off ``batch``; training batches advance the position.

        Called by ``on_before_batch_transfer``; call it yourself if your
        LightningModule overrides that hook (Lightning then skips the datamodule's).
        """
        cursor = batch.pop(STREAM_KEY, None)
        skips = batch.pop(SKIPS_KEY, None)
        split = "val" if cursor is None else "train"
        if skips is not None:
            self._skips[split].update(dict(zip(SKIP_REASONS, skips.tolist(), strict=True)))
        if cursor is not None:
            values = cursor.tolist()
            self._cursors[values[0]] = values[1:]
            self._consumed += 1

    @property
    def consumed_batches(self) -> int:
        """Training batches consumed on this rank (including before a resume)."""
        return self._consumed

    def skip_counts(self, split: str = "train") -> dict[str, int]:
        """Records skipped so far on this rank, by reason (for logging)."""
        return {r: int(self._skips[split][r]) for r in SKIP_REASONS}

    # ------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Data position of every rank. Collective under a distributed Trainer: all
        ranks call it when a checkpoint is saved (Lightning does this)."""
        local = [self._consumed] + [v for c in self._cursors for v in c]
        local += [self._skips["train"][r] for r in SKIP_REASONS]
        rows = torch.tensor([local], dtype=torch.long)
        if self.trainer is not None and self.trainer.world_size > 1:
            strategy = self.trainer.strategy
            gathered = strategy.all_gather(rows[0].to(strategy.root_device))
            rows = gathered.reshape(self.trainer.world_size, -1).cpu()
        return {
            "rows": rows.tolist(),
            "workers": len(self._cursors),
            "reasons": list(SKIP_REASONS),
            "version": 2,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the data position saved by :meth:`state_dict` (applied to this rank)."""
        self._loaded = state_dict
        self._apply_loaded()

    def _apply_loaded(self) -> None:
        stream, state = self.train_stream, self._loaded
        if state is None or stream is None or not state["workers"]:
            return
        rows = state["rows"]
        if len(rows) != stream.world_size:
            raise ValueError(
                f"data position was saved on {len(rows)} ranks, this run has "
                f"{stream.world_size}: exact resume needs the same world size"
            )
        row, workers = rows[stream.rank], int(state["workers"])
        # Counts are stored by name: a checkpoint from before a reason was added loads.
        reasons = state.get("reasons") or (
            _VERSION1_REASONS if state.get("version") == 1 else SKIP_REASONS
        )
        width = (len(row) - 1 - len(reasons)) // workers
        cursors = [row[1 + w * width : 1 + (w + 1) * width] for w in range(workers)]
        stream.set_position(row[0], cursors)
        self._consumed, self._cursors = row[0], cursors
        self._skips["train"] = Counter(dict(zip(reasons, row[1 + workers * width :], strict=True)))


def _first_int(*values: int | None) -> int:
    for v in values:
        if v is not None:
            return int(v)
    raise ValueError("no padding id: pass pad_id")
