"""Diffusion time, masks, and CompDemo's complementary splits (docs/method.md §3, §8, §9).

Token-level and chunk-level versions live side by side: the cross pipeline's chunk
forms take the per-token chunk ids produced by :mod:`tide_lightning.method.alignment`
(``Long[B, L]``, chunk index within the sample, -1 outside every chunk) and never
loop over chunks in Python.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_time(
    batch_size: int,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    per_block: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Diffusion times ``t = eps + (1 - eps) * u``, ``u ~ U[0, 1)`` (docs/method.md §3.1).

    Args:
        batch_size: ``B``.
        eps: lower bound of ``t``.
        generator: optional RNG for reproducible draws.
        per_block: ``None`` for one time per sequence (default), or the number of
            blocks per sequence for BD3LM's per-block times.
        device: device of the result.

    Returns:
        Float[B], or Float[B, per_block] when ``per_block`` is given.
    """
    shape = (batch_size,) if per_block is None else (batch_size, per_block)
    u = torch.rand(shape, generator=generator, device=device)
    return eps + (1.0 - eps) * u


def expand_block_time(t: Tensor, seq_len: int, block_size: int) -> Tensor:
    """Broadcast per-block times ``[B, nb]`` (or per-sequence ``[B]``) to ``[B, L]``."""
    if t.dim() == 1:
        return t[:, None].expand(-1, seq_len)
    block = torch.arange(seq_len, device=t.device) // block_size
    return t[:, block]


def sample_mask(
    x0: Tensor, maskable: Tensor, t: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Mask each maskable token independently with probability ``t`` (linear schedule).

    Args:
        x0: Long[B, L] clean ids (only its shape and device are used).
        maskable: Bool[B, L], True where a token may be masked.
        t: Float[B] per-sequence or Float[B, L] per-token masking rates.
        generator: optional RNG.

    Returns:
        Bool[B, L] masked set ``M`` (a subset of ``maskable``).
    """
    rate = t[:, None] if t.dim() == 1 else t
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    return (u < rate) & maskable


def apply_mask(x0: Tensor, masked: Tensor, mask_id: int) -> Tensor:
    """``xt = where(M, mask_id, x0)``."""
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def complementary_split(
    masked: Tensor, ratio: float = 0.5, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Split the masked set into CompDemo's halves (docs/method.md §8).

    ``M_A = M & (u < ratio)`` and ``M_B = M & ~(u < ratio)``: a partition of ``M``.

    Args:
        masked: Bool[...] masked set (tokens, or chunks for the per-chunk form).
        ratio: probability of landing in ``M_A``.
        generator: optional RNG.

    Returns:
        ``(mask_a, mask_b)``, both Bool of ``masked``'s shape.
    """
    u = torch.rand(masked.shape, generator=generator, device=masked.device)
    in_a = u < ratio
    return masked & in_a, masked & ~in_a


def complementary_inputs(
    x0: Tensor, mask_a: Tensor, mask_b: Tensor, mask_id: int
) -> tuple[Tensor, Tensor]:
    """Teacher inputs for both CompDemo passes as one batch of ``2B`` rows.

    Pass 1 (rows ``0..B-1``) masks only ``M_B`` and is read at ``M_B``; pass 2
    (rows ``B..2B-1``) masks only ``M_A`` and is read at ``M_A``.

    Args:
        x0: Long[B, L] clean teacher ids.
        mask_a, mask_b: Bool[B, L] the two halves.
        mask_id: the teacher's mask id.

    Returns:
        ``(ids, wanted)``: Long[2B, L] teacher input ids and Bool[2B, L] read positions.
    """
    ids = torch.cat([apply_mask(x0, mask_b, mask_id), apply_mask(x0, mask_a, mask_id)])
    return ids, torch.cat([mask_b, mask_a])


def merge_complementary(logits: Tensor, mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """Merge the two CompDemo passes into logits ordered like ``M = M_A | M_B``.

    Args:
        logits: Float[N_B + N_A, V]: pass 1 at ``M_B`` then pass 2 at ``M_A`` (row-major
            order of the ``2B``-row batch of :func:`complementary_inputs`).
        mask_a, mask_b: Bool[B, L] the two halves (disjoint).

    Returns:
        Float[N, V] in the row-major order of ``M``: each ``M_B`` position holds
        pass-1 logits, each ``M_A`` position pass-2 logits.
    """
    masked = mask_a | mask_b
    in_a = mask_a[masked]
    n_b = int(mask_b.sum())
    out = logits.new_empty((in_a.numel(), logits.shape[-1]))
    out[~in_a] = logits[:n_b]
    out[in_a] = logits[n_b:]
    return out


def _scatter_any(flags: Tensor, chunk_ids: Tensor, num_chunks: int) -> Tensor:
    """Bool[B, C]: whether any token of each chunk has ``flags`` set."""
    slot = torch.where(chunk_ids >= 0, chunk_ids, num_chunks)
    counts = torch.zeros(
        (chunk_ids.shape[0], num_chunks + 1), dtype=torch.int32, device=chunk_ids.device
    )
    counts.scatter_add_(1, slot, flags.to(torch.int32))
    return counts[:, :num_chunks] > 0


def chunk_to_token(chunk_flags: Tensor, chunk_ids: Tensor) -> Tensor:
    """Spread per-chunk flags Bool[B, C] to tokens Bool[B, L] (False outside chunks)."""
    inside = chunk_ids >= 0
    if chunk_flags.shape[1] == 0:
        return torch.zeros_like(inside)
    return torch.gather(chunk_flags, 1, chunk_ids.clamp(min=0)) & inside


def num_chunks_of(*chunk_ids: Tensor) -> int:
    """Largest chunk count over the batch (one host sync; collate can precompute it)."""
    return max(int(ids.max()) + 1 if ids.numel() else 0 for ids in chunk_ids)


def chunk_consistent_mask(
    student_mask: Tensor,
    student_maskable: Tensor,
    student_chunk_ids: Tensor,
    teacher_chunk_ids: Tensor,
    num_chunks: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Grow a sampled student mask to whole chunks on both sides (docs/method.md §9).

    Every chunk containing a masked student token becomes fully masked: its student
    tokens where maskable, all its teacher tokens. Active chunks are masked chunks
    with no prompt (non-maskable) student token.

    Args:
        student_mask: Bool[B, Ls] mask drawn by :func:`sample_mask`.
        student_maskable: Bool[B, Ls].
        student_chunk_ids: Long[B, Ls] chunk index per token, -1 outside chunks.
        teacher_chunk_ids: Long[B, Lt] chunk index per token, -1 outside chunks.
        num_chunks: ``C``, chunk slots per sample; computed when omitted.

    Returns:
        ``(student_mask, teacher_mask, chunk_masked, chunk_active)``: Bool[B, Ls],
        Bool[B, Lt], Bool[B, C], Bool[B, C].
    """
    if num_chunks is None:
        num_chunks = num_chunks_of(student_chunk_ids, teacher_chunk_ids)
    chunk_masked = _scatter_any(student_mask, student_chunk_ids, num_chunks)
    has_prompt = _scatter_any(
        ~student_maskable & (student_chunk_ids >= 0), student_chunk_ids, num_chunks
    )
    grown = student_mask | (chunk_to_token(chunk_masked, student_chunk_ids) & student_maskable)
    teacher_mask = chunk_to_token(chunk_masked, teacher_chunk_ids)
    return grown, teacher_mask, chunk_masked, chunk_masked & ~has_prompt


def complementary_chunk_split(
    chunk_masked: Tensor,
    student_chunk_ids: Tensor,
    teacher_chunk_ids: Tensor,
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CompDemo split drawn per chunk, so a chunk's tokens share a half on both sides.

    Args:
        chunk_masked: Bool[B, C] masked chunks.
        student_chunk_ids: Long[B, Ls]; teacher_chunk_ids: Long[B, Lt].
        ratio: probability of a chunk landing in half A.
        generator: optional RNG.

    Returns:
        ``(student_a, student_b, teacher_a, teacher_b)`` token masks; the teacher
        halves partition the teacher mask of :func:`chunk_consistent_mask`.
    """
    chunks_a, chunks_b = complementary_split(chunk_masked, ratio, generator)
    return (
        chunk_to_token(chunks_a, student_chunk_ids),
        chunk_to_token(chunks_b, student_chunk_ids),
        chunk_to_token(chunks_a, teacher_chunk_ids),
        chunk_to_token(chunks_b, teacher_chunk_ids),
    )
