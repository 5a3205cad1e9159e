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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_DRAW_BLOCK = 1024


class Mixture:
    """Maps (shard, draw) to a source and (source, position) to a document index.

    Args:
        sizes: number of documents of each source.
        weights: relative sampling weight of each source.
        seed: base seed; change it to get a different order.
        shuffle: permute each epoch (training) or keep file order (validation).
    """

    def __init__(
        self, sizes: Sequence[int], weights: Sequence[float], seed: int, shuffle: bool = True
    ) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("Mixture needs one weight per source and at least one source")
        self.sizes = [int(n) for n in sizes]
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.seed = seed
        self.shuffle = shuffle
        self._perm: dict[int, tuple[int, np.ndarray]] = {}
        self._draws: tuple[tuple[int, int], np.ndarray] | None = None

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
