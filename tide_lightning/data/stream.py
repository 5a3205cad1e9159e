"""The resumable, sharded stream of ready-made batches (an ``IterableDataset``).

Design (why it resumes exactly):

- Workers build whole batches (the DataLoader runs with ``batch_size=None``), so a
  batch comes from exactly one worker, and PyTorch hands batches out round-robin:
  the n-th batch of a rank comes from worker n mod W.
- A worker's position is a short vector of integers (:class:`Cursor`): the next
  draw of the mixture, the documents taken per source, and where the packing
  buffer starts. Every batch carries the cursor of its worker *after* it, so the
  main process can remember, per worker, the position behind the last batch a
  training step actually consumed (not merely prefetched).
  Only the endless training stream attaches cursors; validation restarts from its
  beginning every time.
- On resume after n consumed batches, physical worker p plays logical worker
  (p + n) mod W from that logical worker's cursor, so the first batch served is
  the one an uninterrupted run would have served next.
- The packing buffer is not saved: it is rebuilt by re-reading the few draws from
  the one where the buffer starts (documents in between that are not packed were
  already emitted and are passed over).
- One bad record never stops the stream: the source counts what it cannot read, and
  an exception of the tokenizer (or the cross-tokenizer alignment) on one record is
  counted as ``tokenize_error``. The replay that rebuilds the packing buffer takes the
  same decisions, so skipping stays exact across a resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import IterableDataset, get_worker_info

from tide_lightning.data.collate import collate
from tide_lightning.data.examples import Example, ExampleBuilder
from tide_lightning.data.mixing import Mixture
from tide_lightning.data.sources import SKIP_REASONS, DocumentSource, SkipLog
from tide_lightning.errors import UserError

STREAM_KEY = "_stream_cursor"
SKIPS_KEY = "_stream_skips"
_FAILED = object()  # the tokenizer raised on this record (not the same as "no example")


@dataclass
class Cursor:
    """Position of one logical worker.

    Attributes:
        draw: index of the next mixture draw.
        batches: batches this logical worker has produced.
        buf_draw: draw whose document starts the packing buffer, -1 when empty.
        buf_offset: token offset into that document where the buffer starts.
        taken: documents taken so far from each source.
    """

    draw: int = 0
    batches: int = 0
    buf_draw: int = -1
    buf_offset: int = 0
    taken: list[int] = field(default_factory=list)

    def to_list(self) -> list[int]:
        """Flat integer form, length 4 + number of sources."""
        return [self.draw, self.batches, self.buf_draw, self.buf_offset, *self.taken]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> Cursor:
        """Inverse of :meth:`to_list`."""
        v = [int(x) for x in values]
        return cls(v[0], v[1], v[2], v[3], v[4:])


class ShardedStream(IterableDataset):
    """Endless (training) or fixed-size (validation) stream of collated batches.

    Args:
        sources: indexed sources.
        weights: mixture weight per source.
        builder: record -> tokens/example.
        batch_size: examples per batch (per rank).
        pad_id: student padding id.
        teacher_pad_id: teacher padding id (cross pipeline).
        seed: mixture/shuffle seed.
        shuffle: reshuffle every epoch of every source.
        num_batches: batches per rank (validation); None streams forever.
        num_workers: DataLoader workers W (0 counts as one, in-process).
        pad_to_max: pad every batch to max_length (and teacher_max_length).
        mixing: "weighted" or "concat" (:mod:`tide_lightning.data.mixing`).
    """

    def __init__(
        self,
        sources: Sequence[DocumentSource],
        weights: Sequence[float],
        builder: ExampleBuilder,
        batch_size: int,
        pad_id: int,
        teacher_pad_id: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        num_batches: int | None = None,
        num_workers: int = 0,
        pad_to_max: bool = False,
        mixing: str = "weighted",
    ) -> None:
        super().__init__()
        self.sources = list(sources)
        self.mixture = Mixture([len(s) for s in sources], weights, seed, shuffle, mixing)
        self.builder = builder
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.teacher_pad_id = teacher_pad_id
        self.num_batches = num_batches
        self.num_workers = num_workers
        self.pad_to_max = pad_to_max
        self.rank, self.world_size = 0, 1
        self.consumed = 0
        self.cursors: list[list[int]] | None = None

    @property
    def logical_workers(self) -> int:
        """Number of worker shards per rank (at least one)."""
        return max(1, self.num_workers)

    def place(self, rank: int, world_size: int) -> None:
        """Set this process's global rank and the world size (before iterating)."""
        self.rank, self.world_size = rank, world_size

    def set_position(self, consumed: int, cursors: list[list[int]] | None) -> None:
        """Resume after ``consumed`` batches from per-logical-worker cursors."""
        if cursors is not None and len(cursors) != self.logical_workers:
            raise ValueError(
                f"data position was saved with {len(cursors)} workers per rank, "
                f"this run has {self.logical_workers}: exact resume needs the same number"
            )
        self.consumed, self.cursors = consumed, cursors

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("the training stream is endless; bound training with max_steps")
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        workers = self.logical_workers
        if info is not None and info.num_workers != workers:
            raise RuntimeError(f"stream built for {workers} workers runs in {info.num_workers}")
        logical = (physical + self.consumed) % workers
        if self.cursors is not None:
            cursor = Cursor.from_list(self.cursors[logical])
        else:
            cursor = Cursor(taken=[0] * len(self.sources))
        shard = self.rank * workers + logical
        limit = None
        if self.num_batches is not None:
            limit = len(range(logical, self.num_batches, workers))
        return self._batches(shard, self.world_size * workers, logical, cursor, limit)

    def _read(self, shard: int, shards: int, cursor: Cursor, skips: SkipLog):
        s, doc = self.mixture.pick(shard, shards, cursor.draw, cursor.taken)
        cursor.draw += 1
        cursor.taken[s] += 1
        return self.sources[s].read(doc, skips)

    def _rebuild_buffer(self, shard: int, shards: int, cursor: Cursor) -> deque:
        """Re-read the draws from ``cursor.buf_draw`` to refill the packing buffer."""
        segments: deque = deque()
        if cursor.buf_draw < 0:
            return segments
        replay = Cursor(cursor.buf_draw, 0, -1, 0, list(cursor.taken))
        for d in range(cursor.buf_draw, cursor.draw):
            replay.taken[self.mixture.pick(shard, shards, d, replay.taken)[0]] -= 1
        quiet = SkipLog(max_warnings=0)
        while replay.draw < cursor.draw:
            d = replay.draw
            record = self._read(shard, shards, replay, quiet)
            if record is not None and self.builder.packable(record):
                toks = _guarded(self.builder.tokens, record, quiet)
                if toks is not _FAILED:
                    start = cursor.buf_offset if d == cursor.buf_draw else 0
                    segments.append([d, start, toks])
        return segments

    def _batches(
        self, shard: int, shards: int, logical: int, cursor: Cursor, limit: int | None
    ) -> Iterator[dict[str, torch.Tensor]]:
        skips = SkipLog()
        reported = [0] * len(SKIP_REASONS)
        segments = self._rebuild_buffer(shard, shards, cursor)  # [draw, offset, tokens]
        length = self.builder.max_length
        total_docs = sum(len(s) for s in self.sources)
        produced = 0
        while limit is None or produced < limit:
            examples: list[Example] = []
            bad_run = 0
            while len(examples) < self.batch_size:
                if sum(len(t) - o for _, o, t in segments) >= length:
                    examples.append(_take_packed(segments, length))
                    continue
                draw = cursor.draw
                record = self._read(shard, shards, cursor, skips)
                ex = None
                if record is not None and self.builder.packable(record):
                    toks = _guarded(self.builder.tokens, record, skips)
                    if toks is not _FAILED:
                        segments.append([draw, 0, toks])
                        bad_run = 0
                        continue
                elif record is not None:
                    ex = _guarded(self.builder.example, record, skips)
                    if ex is None:
                        skips.skip("no_response", record.where, "no answer token within max_length")
                if ex is None or ex is _FAILED:
                    bad_run += 1
                    if bad_run > 2 * total_docs + 100:
                        seen = ", ".join(f"{r} {n}" for r, n in skips.counts.items())
                        raise UserError(
                            f"no usable document in {bad_run} reads from "
                            f"{', '.join(s.spec.path for s in self.sources)} "
                            f"(skipped: {seen or 'none'}): check the sources"
                        )
                    continue
                bad_run = 0
                examples.append(ex)
            cursor.batches += 1
            produced += 1
            cursor.buf_draw, cursor.buf_offset = (
                (segments[0][0], segments[0][1]) if segments else (-1, 0)
            )
            batch = self._collate(examples)
            if limit is None:
                batch[STREAM_KEY] = torch.tensor([logical, *cursor.to_list()], dtype=torch.long)
            counts = [skips.counts[r] for r in SKIP_REASONS]
            batch[SKIPS_KEY] = torch.tensor([c - r for c, r in zip(counts, reported, strict=True)])
            reported = counts
            yield batch

    def _collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        b = self.builder
        return collate(
            examples,
            self.pad_id,
            self.teacher_pad_id,
            pad_to=b.max_length if self.pad_to_max else None,
            teacher_pad_to=b.teacher_max_length
            if self.pad_to_max and b.teacher_max_length
            else None,
        )


def _guarded(fn, record, skips: SkipLog):
    """``fn(record)``, or ``_FAILED`` (counted as tokenize_error) when it raises."""
    try:
        return fn(record)
    except Exception as e:  # one record's tokenization must not stop the run
        skips.skip("tokenize_error", record.where, f"{type(e).__name__}: {e}")
        return _FAILED


def _take_packed(segments: deque, length: int) -> Example:
    """Pop ``length`` tokens off the front of the packing buffer as one full example."""
    ids: list[int] = []
    while len(ids) < length:
        seg = segments[0]
        need = length - len(ids)
        piece = seg[2][seg[1] : seg[1] + need]
        ids += piece
        seg[1] += len(piece)
        if seg[1] >= len(seg[2]):
            segments.popleft()
    return Example(ids, [True] * length)
