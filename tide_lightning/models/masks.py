"""Block-diffusion attention masks, in every form the models use.

The training forward runs on the concatenation of the noisy and the clean copy of a
sequence. One predicate (:func:`bd3lm_allowed`) decides every cell; it is exposed as a
dense boolean matrix (SDPA on CPU, tests), as batch masks with padding, and as a
``mask_mod`` of index tensors (flex attention on CUDA), so every path shares one rule.

Two rules matter for correctness:

- A boolean 4-D mask is only right with SDPA (``True`` = attend). Eager attention
  *adds* the mask to the scores (a bool becomes 0/1, i.e. no masking at all) and
  FlashAttention-2 ignores a 4-D mask; both are silently wrong here. Paths that may
  run under other back-ends (cached decoding, remote-code teachers) use an
  additive float mask instead, which every back-end applies correctly.
- No query row may be fully masked: SDPA turns an all-masked row into NaN, and a NaN
  value vector poisons every later query even where its weight is zero. Every
  query is therefore always allowed to see itself (only padding rows ever rely on
  it, and their outputs are never read).
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
    the halves swapped. Rule (docs/method.md §3.2), with ``blk(i) = (i mod L) // Bk``:

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
    seq_len: int,
    block_size: int,
    clean_first: bool = False,
    device: torch.device | str | None = None,
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


def position_ids_from_mask(valid: Tensor) -> Tensor:
    """Position ids that count real tokens only (left padding gets position 0).

    Args:
        valid: Bool[B, P], ``True`` for real tokens.

    Returns:
        Long[B, P]: ``cumsum(valid) - 1`` clamped at 0.
    """
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def _with_diagonal(allowed: Tensor) -> Tensor:
    """Allow each query its own key (allowed: Bool[B, 1, Q, Q])."""
    q = allowed.shape[-1]
    return allowed | torch.eye(q, dtype=torch.bool, device=allowed.device)


def bd3lm_batch_mask(
    key_valid: Tensor | None,
    seq_len: int,
    block_size: int,
    clean_first: bool = False,
    batch_size: int = 1,
    device=None,
) -> Tensor:
    """Block-diffusion mask over ``2L`` tokens with padding keys removed.

    Args:
        key_valid: Bool[B, L] real tokens of one half (the same for both halves), or None.
        seq_len: ``L``.
        block_size: ``Bk``.
        clean_first: ``False`` for ``[xt ; x0]`` (student), ``True`` for ``[x0 ; xt]`` (WeDLM).
        batch_size: used when ``key_valid`` is None.
        device: where to build it.

    Returns:
        Bool[B, 1, 2L, 2L], ``True`` = attend (SDPA convention).
    """
    rule = bd3lm_attention_mask(seq_len, block_size, clean_first, device=device)
    if key_valid is None:
        return rule.expand(batch_size, 1, 2 * seq_len, 2 * seq_len)
    keys = torch.cat([key_valid, key_valid], dim=-1).bool()
    return _with_diagonal(rule[None, None] & keys[:, None, None, :])


def bidirectional_batch_mask(key_valid: Tensor) -> Tensor:
    """Full bidirectional attention with padding keys removed.

    Args:
        key_valid: Bool[B, L].

    Returns:
        Bool[B, 1, L, L].
    """
    length = key_valid.shape[-1]
    allowed = key_valid.bool()[:, None, None, :].expand(-1, 1, length, -1)
    return _with_diagonal(allowed)


def prefix_block_mask(
    key_valid: Tensor, query_len: int, block_size: int, bidirectional_query: bool
) -> Tensor:
    """Mask for ``query_len`` new tokens appended after a cached prefix.

    The new tokens are the last ``query_len`` of the ``P + Q`` keys. They see every
    valid prefix key; among themselves they are block-causal over the layout index
    (``bidirectional_query=False``, clean blocks being committed) or fully
    bidirectional (``True``, one noisy block being denoised).

    Args:
        key_valid: Bool[B, P + Q] validity of every key (prefix then new tokens).
        query_len: ``Q``.
        block_size: ``Bk``, used for the block-causal case; ``P`` must be a multiple.
        bidirectional_query: see above.

    Returns:
        Bool[B, 1, Q, P + Q].
    """
    total = key_valid.shape[-1]
    prefix = total - query_len
    q_idx = torch.arange(prefix, total, device=key_valid.device)[:, None]
    k_idx = torch.arange(total, device=key_valid.device)[None, :]
    if bidirectional_query:
        rule = torch.ones(query_len, total, dtype=torch.bool, device=key_valid.device)
    else:
        rule = (k_idx // block_size) <= (q_idx // block_size)
    allowed = rule[None, None] & key_valid.bool()[:, None, None, :]
    return allowed | (q_idx == k_idx)[None, None]


def appended_block_mask(
    key_valid: Tensor, query_len: int, block_size: int, bidirectional_query: bool
) -> Tensor:
    """:func:`prefix_block_mask` with blocks counted from the first new token.

    The prefix may have any length (e.g. a cache whose padding columns were dropped):
    every new token sees every valid prefix key, and the new tokens, which start on a
    block boundary of the decoded layout, are block-causal among themselves (or fully
    bidirectional). Equal to :func:`prefix_block_mask` when the prefix length is a
    multiple of ``block_size``.

    Args:
        key_valid: Bool[B, P + Q] validity of every key (prefix then new tokens).
        query_len: ``Q``.
        block_size: ``Bk``.
        bidirectional_query: as in :func:`prefix_block_mask`.

    Returns:
        Bool[B, 1, Q, P + Q].
    """
    total = key_valid.shape[-1]
    prefix = total - query_len
    q_idx = torch.arange(query_len, device=key_valid.device)[:, None]
    k_idx = torch.arange(total, device=key_valid.device)[None, :] - prefix
    if bidirectional_query:
        rule = torch.ones(query_len, total, dtype=torch.bool, device=key_valid.device)
    else:
        rule = (k_idx < 0) | ((k_idx // block_size) <= (q_idx // block_size))
    allowed = rule[None, None] & key_valid.bool()[:, None, None, :]
    return allowed | (q_idx == k_idx)[None, None]


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean ``True``-attends mask to an additive one (0 where allowed, dtype min elsewhere).

    A large finite negative value rather than ``-inf`` keeps fully masked rows finite.

    Args:
        mask: Bool[..., Q, K].
        dtype: float dtype of the scores.

    Returns:
        Float[..., Q, K].
    """
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(mask, zero, neg)


def bd3lm_mask_mod(key_valid: Tensor | None, seq_len: int, block_size: int, clean_first: bool):
    """Flex-attention ``mask_mod(b, h, q_idx, kv_idx)`` equal to :func:`bd3lm_batch_mask`.

    Args:
        key_valid: Bool[B, L] real tokens, or None.
        seq_len: ``L``.
        block_size: ``Bk``.
        clean_first: layout order.
    """

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = bd3lm_allowed(q_idx, kv_idx, seq_len, block_size, clean_first)
        if key_valid is None:
            return allowed
        return (allowed & key_valid[b, kv_idx % seq_len]) | (q_idx == kv_idx)

    return mask_mod


def bd3lm_flex_block_mask(
    key_valid: Tensor | None, seq_len: int, block_size: int, clean_first: bool, batch_size: int
):
    """The same rule as :func:`bd3lm_batch_mask` as a flex-attention ``BlockMask`` (CUDA only).

    Args:
        key_valid: Bool[B, L] or None.
        seq_len: ``L``.
        block_size: ``Bk``.
        clean_first: layout order.
        batch_size: ``B``.

    Returns:
        ``torch.nn.attention.flex_attention.BlockMask`` over ``2L x 2L``.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = bd3lm_mask_mod(key_valid, seq_len, block_size, clean_first)
    device = key_valid.device if key_valid is not None else "cuda"
    batch = batch_size if key_valid is not None else None
    return create_block_mask(mask_mod, batch, None, 2 * seq_len, 2 * seq_len, device=device)
