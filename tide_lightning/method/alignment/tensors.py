"""Chunks as per-token chunk ids, the form the chunk losses and masking consume.

A sample's chunks become one Long vector per side: token i holds the index (0..C-1,
in text order) of the chunk containing it, -1 outside every chunk. Batches pad with
-1, so `chunk_consistent_mask` and `chunk_log_probs` (scatter/gather over the ids)
need no Python loop over chunks in the training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_SIDES = {"student": (0, 1), "teacher": (2, 3)}


def chunk_id_array(chunks: Sequence[Sequence[int]], length: int, side: str) -> np.ndarray:
    """Per-token chunk index of one side, as NumPy.

    Args:
        chunks: `(s_start, s_end, t_start, t_end)` rows, in order and disjoint.
        length: number of tokens on that side (ranges past it are clipped).
        side: "student" or "teacher".

    Returns:
        int64[length], chunk index per token, -1 outside chunks.
    """
    if side not in _SIDES:
        raise ValueError(f"side must be 'student' or 'teacher', got {side!r}")
    out = np.full(length, -1, dtype=np.int64)
    rows = np.asarray(chunks, dtype=np.int64).reshape(-1, 4)
    if len(rows) == 0:
        return out
    a, b = _SIDES[side]
    starts, ends = np.minimum(rows[:, a], length), np.minimum(rows[:, b], length)
    sizes = ends - starts
    pos = np.repeat(starts - np.cumsum(sizes) + sizes, sizes) + np.arange(int(sizes.sum()))
    out[pos] = np.repeat(np.arange(len(rows)), sizes)
    return out


def chunk_id_tensor(chunks: Sequence[Sequence[int]], length: int, side: str) -> torch.Tensor:
    """Per-token chunk index of one side.

    Args:
        chunks: `(s_start, s_end, t_start, t_end)` rows, in order and disjoint.
        length: number of tokens on that side.
        side: "student" or "teacher".

    Returns:
        Long[length], chunk index per token (0..C-1 in order), -1 outside chunks.
    """
    return torch.from_numpy(chunk_id_array(chunks, length, side))


def pad_chunk_ids(rows: Sequence[torch.Tensor], length: int | None = None) -> torch.Tensor:
    """Stack per-sample chunk-id vectors into a batch, padding with -1.

    Args:
        rows: B tensors Long[L_b].
        length: batch width; the longest row when None (longer rows are cut).

    Returns:
        Long[B, length].
    """
    width = max((len(r) for r in rows), default=0) if length is None else length
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        n = min(len(r), width)
        out[b, :n] = r[:n]
    return out
