"""An immutable key/value cache for block-by-block decoding.

transformers' own caches mutate in place on every forward, which is wrong for
block diffusion: a block is denoised over several forwards against the same
prefix, and only the committed (clean) block may be appended. Here a forward gets a
:class:`CacheRecorder` view: attention layers read ``prefix + new`` keys/values
through the ``update(key, value, layer_idx)`` call transformers makes, the new ones
are recorded, and :meth:`CacheRecorder.extended` builds a *new* cache only when the
caller commits. The cache never changes after construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BlockCache:
    """Cached keys/values of a clean prefix.

    Attributes:
        keys: per layer Float[B, H_kv, P, D] (empty tuple when ``P == 0``).
        values: per layer Float[B, H_kv, P, D].
        key_valid: Bool[B, P], ``False`` for left padding.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    key_valid: Tensor

    @staticmethod
    def empty(batch_size: int, device=None) -> BlockCache:
        """A cache with no tokens."""
        return BlockCache((), (), torch.zeros(batch_size, 0, dtype=torch.bool, device=device))

    @property
    def length(self) -> int:
        """``P``, the number of cached positions (padding included)."""
        return self.key_valid.shape[1]


class CacheRecorder:
    """Duck-typed transformers cache: serves ``prefix + new`` and records ``new``.

    Args:
        cache: the prefix; never modified.
    """

    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache
        self.new_keys: dict[int, Tensor] = {}
        self.new_values: dict[int, Tensor] = {}

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        """Return the keys/values attention should use at ``layer_idx``: Float[B, H_kv, P+Q, D]."""
        self.new_keys[layer_idx] = key_states
        self.new_values[layer_idx] = value_states
        if not self.cache.keys:
            return key_states, value_states
        keys = torch.cat([self.cache.keys[layer_idx], key_states], dim=-2)
        values = torch.cat([self.cache.values[layer_idx], value_states], dim=-2)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.length

    def extended(self, new_valid: Tensor) -> BlockCache:
        """A new cache with the recorded keys/values appended.

        Args:
            new_valid: Bool[B, Q] validity of the recorded positions.
        """
        layers = sorted(self.new_keys)
        keys, values = [], []
        for i in layers:
            old_k = self.cache.keys[i] if self.cache.keys else None
            old_v = self.cache.values[i] if self.cache.values else None
            new_k, new_v = self.new_keys[i].detach(), self.new_values[i].detach()
            keys.append(new_k if old_k is None else torch.cat([old_k, new_k], dim=-2))
            values.append(new_v if old_v is None else torch.cat([old_v, new_v], dim=-2))
        valid = torch.cat([self.cache.key_valid, new_valid], dim=1)
        return BlockCache(tuple(keys), tuple(values), valid)
