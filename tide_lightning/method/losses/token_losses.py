"""Token-level losses at masked positions: block-diffusion CE, TIDAL, forward/reverse KL.

Every function takes logits already gathered at the masked positions (``[N, V]``,
row-major order of the mask) and runs its math in float32 row slices through
:func:`~tide_lightning.method.losses.rowwise.row_chunked_loss`; results and gradients equal
the plain formulas (tested against them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tide_lightning.method.losses.rowwise import row_chunked_loss, rows_per_chunk


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "student and teacher logits must both be [N, V] with the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def _zero(like: Tensor) -> Tensor:
    # Keeps the graph connected when nothing is masked, so DDP sees every parameter.
    return like.sum().float() * 0.0


def _interpolated_kl_kernel(temperature: float):
    inv_t = 1.0 / temperature

    def kernel(s: Tensor, z: Tensor, lam: Tensor, coef: Tensor, need_grad: bool):
        # In-place where possible: a slice costs about four float32 [n, V] buffers.
        log_q = F.log_softmax(s * inv_t, dim=-1)
        mix = torch.lerp(s, z.float(), lam[:, None]).mul_(inv_t)
        log_r = F.log_softmax(mix, dim=-1)
        del mix
        r = log_r.exp()
        diff = log_r.sub_(log_q).masked_fill_(r == 0, 0.0)  # r log r = 0 where r = 0
        kl = torch.linalg.vecdot(r, diff)
        grad = None
        if need_grad:
            # r is detached: d KL(r || q) / ds = (q - r) / T.
            grad = log_q.exp_().sub_(r).mul_((coef * inv_t)[:, None])
        return (coef * kl).sum(), grad

    return kernel


def tidal_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    lam: Tensor,
    temperature: float = 2.0,
    weight: Tensor | None = None,
) -> Tensor:
    """TIDAL loss at masked positions (docs/method.md §6).

    Target ``r = softmax(((1 - lambda) s + lambda z) / T)`` (detached); loss
    ``T^2 * sum_i w_i KL(r_i || softmax(s_i / T)) / N``.

    Args:
        student_logits: Float[N, V] student logits over the shared vocabulary.
        teacher_logits: Float[N, V] teacher logits (no gradient).
        lam: Float[N] per-position ``lambda_t``.
        temperature: ``T``.
        weight: Float[N] time weight ``w(t_i)``; ``None`` means 1.

    Returns:
        Float32 scalar; 0 (graph-connected) when ``N == 0``.
    """
    _check_pair(student_logits, teacher_logits)
    n = student_logits.shape[0]
    if n == 0:
        return _zero(student_logits)
    w = torch.ones(n, device=student_logits.device) if weight is None else weight.float()
    coef = w * (temperature**2 / n)
    kernel = _interpolated_kl_kernel(temperature)
    return row_chunked_loss(student_logits, kernel, teacher_logits, lam.float(), coef)


def forward_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0
) -> Tensor:
    """Forward KL ``T^2 * mean_i KL(p_i || q_i)``, ``p = softmax(z / T)``, ``q = softmax(s / T)``.

    Args:
        student_logits: Float[N, V]; teacher_logits: Float[N, V].
        temperature: ``T``.

    Returns:
        Float32 scalar.
    """
    lam = torch.ones(student_logits.shape[0], device=student_logits.device)
    return tidal_loss(student_logits, teacher_logits, lam, temperature)


def _reverse_kl_kernel(temperature: float):
    inv_t = 1.0 / temperature

    def kernel(s: Tensor, z: Tensor, coef: Tensor, need_grad: bool):
        log_q = F.log_softmax(s * inv_t, dim=-1)
        log_p = F.log_softmax(z.float() * inv_t, dim=-1)
        q = log_q.exp()
        diff = log_q.sub_(log_p).masked_fill_(q == 0, 0.0)
        del log_p
        kl = torch.linalg.vecdot(q, diff)
        grad = None
        if need_grad:
            # d/ds_j sum_k q_k (log q_k - log p_k) = q_j (a_j - KL) / T.
            grad = diff.sub_(kl[:, None]).mul_(q).mul_((coef * inv_t)[:, None])
        return (coef * kl).sum(), grad

    return kernel


def reverse_kl_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0
) -> Tensor:
    """Reverse KL ``T^2 * mean_i KL(q_i || p_i)`` (mode-seeking baseline).

    Args:
        student_logits: Float[N, V]; teacher_logits: Float[N, V].
        temperature: ``T``.

    Returns:
        Float32 scalar.
    """
    _check_pair(student_logits, teacher_logits)
    n = student_logits.shape[0]
    if n == 0:
        return _zero(student_logits)
    coef = torch.full((n,), temperature**2 / n, device=student_logits.device)
    return row_chunked_loss(student_logits, _reverse_kl_kernel(temperature), teacher_logits, coef)


def _weighted_ce_kernel(s: Tensor, targets: Tensor, coef: Tensor, need_grad: bool):
    lse = s.logsumexp(-1)
    ce = lse - s.gather(1, targets[:, None]).squeeze(1)
    grad = None
    if need_grad:
        grad = (s - lse[:, None]).exp_()
        grad.scatter_add_(1, targets[:, None], -torch.ones_like(lse[:, None]))
        grad.mul_(coef[:, None])
    return (coef * ce).sum(), grad


def masked_diffusion_ce(
    logits: Tensor, x0: Tensor, masked: Tensor, t: Tensor, maskable: Tensor
) -> Tensor:
    """Block-diffusion NELBO term ``sum M (1/t) CE(logits, x0) / sum maskable`` (docs/method.md §3.5).

    Args:
        logits: Float[B, L, V] full logits, or Float[N, V] already gathered at ``masked``.
        x0: Long[B, L] clean targets.
        masked: Bool[B, L] masked set.
        t: Float[B] per-sequence or Float[B, L] per-token times.
        maskable: Bool[B, L].

    Returns:
        Float32 scalar; 0 when nothing is masked.
    """
    if logits.dim() == 3:
        logits = logits[masked]
    inv_t = (1.0 / t.float())[:, None].expand_as(masked) if t.dim() == 1 else 1.0 / t.float()
    denominator = maskable.sum().clamp(min=1).float()
    if logits.shape[0] == 0:
        return _zero(logits)
    coef = inv_t[masked] / denominator
    return row_chunked_loss(logits, _weighted_ce_kernel, x0[masked], coef)


@torch.no_grad()
def kl_per_position(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Diagnostic ``KL(p || q)`` at temperature 1 per row, Float32[N] (no gradient)."""
    _check_pair(student_logits, teacher_logits)
    out = torch.empty(student_logits.shape[0], device=student_logits.device)
    step = rows_per_chunk(student_logits.shape[-1])
    for start in range(0, student_logits.shape[0], step):
        log_q = F.log_softmax(student_logits[start : start + step].float(), -1)
        log_p = F.log_softmax(teacher_logits[start : start + step].float(), -1)
        p = log_p.exp()
        out[start : start + step] = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    return out
