"""A preallocated key/value cache for block-by-block decoding.

Block diffusion denoises a block over several forwards against the same prefix, and
only the committed (clean) block may join the prefix. transformers' own caches append
on every forward, and the earlier version of this file rebuilt ``prefix + new`` with a
``torch.cat`` per layer at every denoising step, copying the whole prefix each time.

Here each layer owns one buffer of ``capacity`` positions, allocated once. The cache
is passed to the model as its transformers cache (``update`` / ``get_seq_length``): a
forward writes its new keys/values into the *scratch* slots ``[P, P + Q)`` right after
the ``P`` committed ones and attention reads the view ``[:P + Q]``. Nothing is copied,
and nothing committed changes: :meth:`BlockCache.commit` is the only way to grow ``P``,
and it just advances the length over keys/values a forward already wrote. A noisy
block's keys/values stay in the scratch slots, where the next forward overwrites them.

The cache is therefore mutable, unlike the tuples it replaces: share it between two
decoding streams only if neither commits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class BlockCache:
    """Per-layer key/value buffers of a clean prefix, ``P`` positions committed.

    Args:
        batch_size: ``B``.
        capacity: positions to preallocate (grown on demand; ``P + max_new_tokens`` avoids
            any regrowth while decoding).
        device: where the buffers go.
    """

    def __init__(self, batch_size: int, capacity: int = 0, device=None) -> None:
        self.batch_size = batch_size
        self.capacity = capacity
        self.length = 0
        self._keys: dict[int, Tensor] = {}
        self._values: dict[int, Tensor] = {}
        self._valid = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self._memo: dict[str, tuple[tuple, object]] = {}

    @staticmethod
    def empty(batch_size: int, device=None, capacity: int = 0) -> BlockCache:
        """A cache with no committed tokens."""
        return BlockCache(batch_size, capacity, device)

    @property
    def keys(self) -> tuple[Tensor, ...]:
        """Committed keys, per layer Float[B, H_kv, P, D] (views; empty tuple before any forward)."""
        return tuple(self._keys[i][:, :, : self.length] for i in sorted(self._keys))

    @property
    def values(self) -> tuple[Tensor, ...]:
        """Committed values, per layer Float[B, H_kv, P, D] (views)."""
        return tuple(self._values[i][:, :, : self.length] for i in sorted(self._values))

    @property
    def key_valid(self) -> Tensor:
        """Bool[B, P], ``False`` for left padding."""
        return self._valid[:, : self.length]

    def _reserve(self, needed: int) -> None:
        """Raise ``capacity`` to hold ``needed`` positions (at least doubling: amortised O(1)).

        The validity buffer grows at once; a layer's key/value buffers grow at its next
        :meth:`update`, which comes before anything reads them.
        """
        if needed <= self.capacity:
            return
        self.capacity = max(needed, 2 * self.capacity)
        grown = self._valid.new_zeros(self.batch_size, self.capacity)
        grown[:, : self.length] = self._valid[:, : self.length]
        self._valid = grown

    def _fit(self, buffer: Tensor | None, like: Tensor) -> Tensor:
        """``buffer``, reallocated to ``capacity`` positions on dim -2 if smaller."""
        if buffer is not None and buffer.shape[-2] >= self.capacity:
            return buffer
        batch, heads, _, dim = like.shape
        grown = like.new_empty(batch, heads, self.capacity, dim)
        if buffer is not None:
            grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        """transformers' cache hook: write ``Q`` new keys/values to scratch, return all ``P + Q``.

        Args:
            key_states: Float[B, H_kv, Q, D] keys of the tokens being run.
            value_states: Float[B, H_kv, Q, D].
            layer_idx: decoder layer.

        Returns:
            ``(keys, values)``: views Float[B, H_kv, P + Q, D] of the layer's buffers.
        """
        end = self.length + key_states.shape[-2]
        self._reserve(end)
        keys = self._keys[layer_idx] = self._fit(self._keys.get(layer_idx), key_states)
        values = self._values[layer_idx] = self._fit(self._values.get(layer_idx), value_states)
        keys[:, :, self.length : end] = key_states.detach()
        values[:, :, self.length : end] = value_states.detach()
        return keys[:, :, :end], values[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def commit(self, count: int, valid: Tensor | None = None) -> None:
        """Make the first ``count`` scratch positions (written by the last forward) committed.

        Args:
            count: positions to commit.
            valid: Bool[B, count] validity of those positions, or None (all real).
        """
        end = self.length + count
        self._reserve(end)
        self._valid[:, self.length : end] = True if valid is None else valid.bool()
        self.length = end

    def select_rows(self, rows: Tensor) -> BlockCache:
        """A new cache holding only ``rows`` (Bool[B] or Long[B'] index) of this one."""
        out = BlockCache(0, 0, self._valid.device)
        out._valid = self._valid[rows]
        out.batch_size = out._valid.shape[0]
        out.capacity, out.length = self.capacity, self.length
        out._keys = {i: k[rows] for i, k in self._keys.items()}
        out._values = {i: v[rows] for i, v in self._values.items()}
        return out

    def without_padding(self) -> BlockCache:
        """This cache without the committed positions that are padding in every row.

        No query ever gives such a key any weight, so dropping it changes no result; a
        cache left with no padding at all (always the case for one prompt) lets decoding
        run attention with no mask. Blocks are counted from the new tokens on (see
        :func:`tide_lightning.models.masks.appended_block_mask`), so the shorter prefix
        does not need to be a multiple of the block size.

        Returns:
            ``self`` when nothing is dropped, else a new cache (buffers copied).
        """
        keep = self.key_valid.any(0)
        if bool(keep.all()):
            return self
        columns = keep.nonzero()[:, 0]
        out = BlockCache(
            self.batch_size, len(columns) + self.capacity - self.length, self._valid.device
        )
        out.length = len(columns)
        out._valid[:, : out.length] = self._valid[:, columns]
        for mine, theirs in ((self._keys, out._keys), (self._values, out._values)):
            for i, buffer in mine.items():
                batch, heads, _, dim = buffer.shape
                theirs[i] = buffer.new_empty(batch, heads, out.capacity, dim)
                theirs[i][:, :, : out.length] = buffer[:, :, columns]
        return out

    def memo(self, name: str, key: tuple, build: Callable[[], object]):
        """``build()``, reused while ``key`` and the committed length stay the same.

        Every step of a block asks for the same attention mask and the same rotary
        embeddings of the block's positions; they only change when something is
        committed, so they are built once per block. ``key`` may hold tensors (compared
        by value, which costs far less than rebuilding).

        Args:
            name: what is memoised (one entry per name).
            key: everything ``build`` depends on besides the committed state.
            build: computes the value.
        """
        key = (self.length, *key)
        entry = self._memo.get(name)
        if entry is None or not _same(entry[0], key):
            entry = self._memo[name] = (key, build())
        return entry[1]


def _same(a: tuple, b: tuple) -> bool:
    """Element-wise equality of two keys; tensors by shape, dtype and value."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, Tensor) or isinstance(y, Tensor):
            if not (
                isinstance(x, Tensor)
                and isinstance(y, Tensor)
                and x.shape == y.shape
                and x.dtype == y.dtype
                and torch.equal(x, y)
            ):
                return False
        elif x != y:
            return False
    return True
