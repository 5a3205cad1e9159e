"""Chunk-level losses for the cross-tokenizer pipeline (docs/method.md §10, §11).

A chunk is a span of text tokenized differently on the two sides; its probability
is the product of its gold-token probabilities, tempered: ``p_c = exp(LP_c / T)``.
Losses compare the two sides' chunk probabilities as Bernoulli variables.
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK_EPS = 1e-7


def chunk_log_probs(token_log_probs: Tensor, chunk_ids: Tensor, num_chunks: int) -> Tensor:
    """Sum gold-token log-probabilities per chunk.

    Args:
        token_log_probs: Float[B, L] ``log softmax(logits_i)[x0_i]`` (0 where not computed).
        chunk_ids: Long[B, L] chunk index per token, -1 outside chunks.
        num_chunks: ``C``.

    Returns:
        Float[B, C] ``LP_c``; 0 for chunk slots a sample does not have.
    """
    slot = torch.where(chunk_ids >= 0, chunk_ids, num_chunks)
    sums = torch.zeros(
        (chunk_ids.shape[0], num_chunks + 1),
        dtype=token_log_probs.dtype,
        device=token_log_probs.device,
    )
    sums = sums.scatter_add(1, slot, token_log_probs)
    return sums[:, :num_chunks]


def chunk_probs(chunk_logp: Tensor, temperature: float, eps: float = CHUNK_EPS) -> Tensor:
    """``clamp(exp(LP_c / T), eps, 1 - eps)`` in float32."""
    return torch.exp(chunk_logp.float() / temperature).clamp(eps, 1.0 - eps)


def _bernoulli_ce(target: Tensor, prob: Tensor) -> Tensor:
    return -(target * torch.log(prob) + (1.0 - target) * torch.log1p(-prob))


def calm_from_probs(s: Tensor, t: Tensor) -> Tensor:
    """Forward CALM per chunk ``-[t log s + (1 - t) log(1 - s)]``; ``t`` detached."""
    return _bernoulli_ce(t.detach(), s)


def reverse_calm_from_probs(s: Tensor, t: Tensor) -> Tensor:
    """Reverse CALM per chunk ``-[s log t + (1 - s) log(1 - t)]``; ``dl/ds = -logit(t)``."""
    return _bernoulli_ce(s, t.detach())


def _mean(values: Tensor) -> Tensor:
    return values.sum() * 0.0 if values.numel() == 0 else values.mean()


def calm_loss(
    student_chunk_logp: Tensor, teacher_chunk_logp: Tensor, temperature: float = 5.0
) -> Tensor:
    """Forward CALM averaged over active chunks (docs/method.md §10).

    Args:
        student_chunk_logp: Float[C] student ``LP_c`` of the active chunks (with gradient).
        teacher_chunk_logp: Float[C] teacher ``LP_c`` (no gradient).
        temperature: ``T``.

    Returns:
        Float32 scalar (0 when there is no active chunk). No ``T^2`` factor.
    """
    s = chunk_probs(student_chunk_logp, temperature)
    t = chunk_probs(teacher_chunk_logp.detach(), temperature)
    return _mean(calm_from_probs(s, t))


def reverse_calm_loss(
    student_chunk_logp: Tensor, teacher_chunk_logp: Tensor, temperature: float = 5.0
) -> Tensor:
    """Reverse CALM averaged over active chunks (docs/method.md §10); the TIDE-Cross loss.

    Args:
        student_chunk_logp: Float[C]; teacher_chunk_logp: Float[C]; temperature: ``T``.

    Returns:
        Float32 scalar.
    """
    s = chunk_probs(student_chunk_logp, temperature)
    t = chunk_probs(teacher_chunk_logp.detach(), temperature)
    return _mean(reverse_calm_from_probs(s, t))


def _chunk_tidal_target(
    student_chunk_logp: Tensor,
    teacher_chunk_logp: Tensor,
    lam: Tensor,
    temperature: float,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``s_c`` (with gradient) and the detached, clamped interpolation ``m_c`` of both TIDALs."""
    s = chunk_probs(student_chunk_logp, temperature, eps)
    t = chunk_probs(teacher_chunk_logp.detach(), temperature, eps)
    lam = lam.float()
    return s, ((1.0 - lam) * s + lam * t).detach().clamp(eps, 1.0 - eps)


def chunk_tidal_loss(
    student_chunk_logp: Tensor,
    teacher_chunk_logp: Tensor,
    lam: Tensor,
    temperature: float = 5.0,
    weight: Tensor | None = None,
    eps: float = CHUNK_EPS,
) -> Tensor:
    """Chunk-space TIDAL (docs/method.md §11, "TIDE-Shared (A)").

    ``m_c = clamp(((1 - lambda) s_c + lambda t_c).detach(), eps, 1 - eps)``,
    ``l_c = -[m_c log s_c + (1 - m_c) log(1 - s_c)]``, weighted by ``w`` and averaged
    over the active chunks (divided by their count). No ``T^2``.

    Args:
        student_chunk_logp: Float[C]; teacher_chunk_logp: Float[C].
        lam: Float[C] per-chunk ``lambda_t``.
        temperature: ``T``.
        weight: Float[C] time weights, ``None`` for 1.

    Returns:
        Float32 scalar.
    """
    s, target = _chunk_tidal_target(student_chunk_logp, teacher_chunk_logp, lam, temperature, eps)
    losses = _bernoulli_ce(target, s)
    if weight is not None:
        losses = losses * weight.float()
    return _mean(losses)


def reverse_chunk_tidal_loss(
    student_chunk_logp: Tensor,
    teacher_chunk_logp: Tensor,
    lam: Tensor,
    temperature: float = 5.0,
    weight: Tensor | None = None,
    eps: float = CHUNK_EPS,
) -> Tensor:
    """Reverse chunk-space TIDAL (the published ``reverse_alm_taid``, docs/method.md §11).

    The same detached target ``m_c`` as :func:`chunk_tidal_loss`, with the roles of the
    Bernoulli cross-entropy swapped as in Reverse CALM: ``l_c = -[s_c log m_c +
    (1 - s_c) log(1 - m_c)]``. So ``dl/ds_c = -logit(m_c)``, bounded by ``ln(1/eps)``
    through the clamp, where the forward form's ``(s - m) / (s (1 - s))`` grows without
    bound as ``s_c -> 0``. Weighted by ``w`` and divided by the active-chunk count; no
    ``T^2``.

    Args:
        student_chunk_logp: Float[C] student ``LP_c`` (with gradient).
        teacher_chunk_logp: Float[C] teacher ``LP_c`` (no gradient).
        lam: Float[C] per-chunk ``lambda_t``.
        temperature: ``T``.
        weight: Float[C] time weights, ``None`` for 1.

    Returns:
        Float32 scalar (0, graph-connected, when there is no active chunk).
    """
    s, target = _chunk_tidal_target(student_chunk_logp, teacher_chunk_logp, lam, temperature, eps)
    losses = _bernoulli_ce(s, target)
    if weight is not None:
        losses = losses * weight.float()
    return _mean(losses)
