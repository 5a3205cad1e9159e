"""Deterministic weighted mixture: which document is the j-th one a shard reads.

Everything here is a pure function of (seed, shard, counter), so a position in the
stream is a handful of integers and a resumed worker recomputes its next document
directly: there is no shuffle buffer whose content could be lost on resume.

- Each source is an endless sequence of epochs; epoch e is a permutation of the
  source's documents seeded by (seed, source, e) (identity when not shuffling).
- Shard k of K owns positions k, k + K, k + 2K, ... of every source's sequence, so
  shards (node x rank x worker) read disjoint documents within an epoch.
- The source of a shard's d-th draw is sampled with probabilities proportional to
  the weights from a generator seeded by (seed, shard, d // 1024).

Two mixing modes (``data.mixing``):

- ``weighted``: the draws above; each source cycles at the rate its weight sets.
- ``concat`` (the published recipe, which concatenates the datasets and shuffles):
  the sources form one index space of ``N = sum(sizes)`` documents, epoch e is a
  permutation of it seeded by (seed, e), and shard k's d-th draw is global position
  ``k + d * K``. So every document is read exactly once per epoch across all shards,
  and sources are sampled in proportion to their size without any weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_DRAW_BLOCK = 1024
MIXING_MODES = ("weighted", "concat")


class Mixture:
    """Maps (shard, draw) to a source and (source, position) to a document index.

    Args:
        sizes: number of documents of each source.
        weights: relative sampling weight of each source.
        seed: base seed; change it to get a different order.
        shuffle: permute each epoch (training) or keep file order (validation).
        mode: "weighted" or "concat" (see the module docstring); concat ignores weights.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        seed: int,
        shuffle: bool = True,
        mode: str = "weighted",
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("Mixture needs one weight per source and at least one source")
        if mode not in MIXING_MODES:
            raise ValueError(f"mixing mode must be one of {MIXING_MODES}, got {mode!r}")
        self.mode = mode
        self.sizes = [int(n) for n in sizes]
        self._starts = np.cumsum([0, *self.sizes])
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.seed = seed
        self.shuffle = shuffle
        self._perm: dict[int, tuple[int, np.ndarray]] = {}
        self._draws: tuple[tuple[int, int], np.ndarray] | None = None
        self._global_perm: tuple[int, np.ndarray] | None = None

    def pick(self, shard: int, shards: int, draw: int, taken: Sequence[int]) -> tuple[int, int]:
        """Source and document index of a shard's ``draw``-th read.

        Args:
            shard: this shard's index k.
            shards: number of shards K.
            draw: 0-based draw counter of the shard.
            taken: documents the shard has taken from each source so far (weighted mode
                reads the source's next position from it; concat mode does not need it).
        """
        if self.mode == "weighted":
            s = self.source_of_draw(shard, draw)
            return s, self.document(s, shard + taken[s] * shards)
        epoch, i = divmod(shard + draw * shards, int(self._starts[-1]))
        if self.shuffle:
            if self._global_perm is None or self._global_perm[0] != epoch:
                rng = np.random.default_rng([self.seed, 104729, epoch])
                # int32 halves the memory of a multi-million-document permutation.
                perm = rng.permutation(int(self._starts[-1])).astype(np.int32)
                self._global_perm = (epoch, perm)
            i = int(self._global_perm[1][i])
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return s, i - int(self._starts[s])

    def source_of_draw(self, shard: int, draw: int) -> int:
        """Source index of the shard's ``draw``-th document (0-based)."""
        if len(self.sizes) == 1:
            return 0
        key = (shard, draw // _DRAW_BLOCK)
        if self._draws is None or self._draws[0] != key:
            rng = np.random.default_rng([self.seed, 7919, shard, key[1]])
            self._draws = (key, rng.choice(len(self.sizes), size=_DRAW_BLOCK, p=self.probs))
        return int(self._draws[1][draw % _DRAW_BLOCK])

    def document(self, source: int, position: int) -> int:
        """Document index at ``position`` of the source's endless epoch sequence."""
        n = self.sizes[source]
        epoch, i = divmod(position, n)
        if not self.shuffle:
            return i
        cached = self._perm.get(source)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, source, epoch])
            cached = self._perm[source] = (epoch, rng.permutation(n))
        return int(cached[1][i])


def optimizer_steps(
    records: int, epochs: float, batch_size: int, world_size: int, accumulate: int = 1
) -> int:
    """Optimizer steps of ``epochs`` passes over ``records`` examples.

    Counted as a distributed epoch is: each of the ``world_size`` ranks gets
    ``ceil(records / world_size)`` examples in ``ceil(. / batch_size)`` batches, and
    every ``accumulate`` batches make one optimizer step (at least one per epoch).

    Args:
        records: usable training records (after filters and the held-out carve).
        epochs: passes over them (may be fractional).
        batch_size: examples per batch per rank.
        world_size: ranks (devices x nodes).
        accumulate: gradient accumulation.

    Returns:
        The total step count, at least 1.
    """
    if records <= 0 or epochs <= 0 or batch_size <= 0 or world_size <= 0 or accumulate <= 0:
        raise ValueError(
            f"optimizer_steps needs positive arguments, got records={records}, epochs={epochs}, "
            f"batch_size={batch_size}, world_size={world_size}, accumulate={accumulate}"
        )
    batches = math.ceil(math.ceil(records / world_size) / batch_size)
    per_epoch = max(batches // accumulate, 1)
    return max(math.ceil(epochs * per_epoch), 1)
