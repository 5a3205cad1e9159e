"""Block-diffusion attention masks (SPEC section 3).

The training forward runs on the concatenation of the noisy and the clean copy of a
sequence. One predicate decides every cell; it is exposed both as a dense boolean
matrix (SDPA on CPU, tests) and as a function of index tensors (flex attention's
``mask_mod`` on CUDA), so both paths share the same rule.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bd3lm_allowed(
    q_idx: Tensor, kv_idx: Tensor, seq_len: int, block_size: int, clean_first: bool = False
) -> Tensor:
    """Whether query ``q_idx`` may attend key ``kv_idx`` in the ``2L`` layout.

    With ``clean_first=False`` the layout is ``[xt ; x0]`` (the student); with
    ``clean_first=True`` it is ``[x0 ; xt]`` (WeDLM teachers), the same rule with
    the halves swapped. Rule (SPEC section 3), with ``blk(i) = (i mod L) // Bk``:

    - same block and same half (bidirectional inside a block), or
    - query noisy, key clean, and ``blk(q) > blk(k)``, or
    - both clean and ``blk(q) >= blk(k)``.

    Args:
        q_idx: integer tensor of query indices in ``[0, 2L)``.
        kv_idx: integer tensor of key indices in ``[0, 2L)``, broadcastable with ``q_idx``.
        seq_len: ``L``, the length of one half.
        block_size: ``Bk``.
        clean_first: ``True`` for the ``[x0 ; xt]`` order.

    Returns:
        Bool tensor of the broadcast shape.
    """
    q_second = q_idx >= seq_len
    k_second = kv_idx >= seq_len
    q_clean = q_second if not clean_first else ~q_second
    k_clean = k_second if not clean_first else ~k_second
    q_blk = (q_idx % seq_len) // block_size
    k_blk = (kv_idx % seq_len) // block_size
    same_block_same_half = (q_blk == k_blk) & (q_clean == k_clean)
    noisy_sees_past_clean = ~q_clean & k_clean & (q_blk > k_blk)
    clean_causal = q_clean & k_clean & (q_blk >= k_blk)
    return same_block_same_half | noisy_sees_past_clean | clean_causal


def bd3lm_attention_mask(
    seq_len: int, block_size: int, clean_first: bool = False, device=None
) -> Tensor:
    """Dense block-diffusion mask over the ``2L`` concatenated sequence.

    Args:
        seq_len: ``L``, the length of each half.
        block_size: ``Bk``; ``L`` need not be a multiple (the last block is short).
        clean_first: ``False`` for ``[xt ; x0]`` (student), ``True`` for ``[x0 ; xt]`` (WeDLM).
        device: where to build it.

    Returns:
        Bool[2L, 2L], ``True`` where query (row) may attend key (column).
    """
    if seq_len <= 0 or block_size <= 0:
        raise ValueError(f"seq_len and block_size must be positive, got {seq_len} and {block_size}")
    idx = torch.arange(2 * seq_len, device=device)
    return bd3lm_allowed(idx[:, None], idx[None, :], seq_len, block_size, clean_first)


def block_causal_mask(seq_len: int, block_size: int, device=None) -> Tensor:
    """Mask for a single sequence decoded block by block (sampling, cached prefix).

    Query ``q`` may attend key ``k`` iff ``blk(k) <= blk(q)``: this is the clean
    half's rule, which a KV-cached decoder reproduces block by block.

    Returns:
        Bool[L, L].
    """
    blk = torch.arange(seq_len, device=device) // block_size
    return blk[None, :] <= blk[:, None]
