"""The paper's mechanisms measured on a teacher directly, binned by diffusion time t.

- CompDemo's claim: a teacher that sees the complementary half of the masked set predicts
  the other half better, most of all under heavy masking. Measured: the teacher's top-1
  accuracy and NLL on the masked tokens with every masked token hidden (one pass) and with
  CompDemo's two passes (each half read while the other half is revealed).
- TIDAL's premise: the trust ``lambda_t`` should fall where the teacher is unreliable.
  Measured: the teacher's accuracy per t bin printed next to ``lambda_t`` at the middle and
  end of training, so the schedule can be judged against the teacher's real reliability.

- Reverse CALM's claim: its gradient is bounded by the teacher. Measured: the norm of the
  gradient of the CALM and of the Reverse CALM loss with respect to the student's chunk
  log-probabilities, per validation batch, on a trained student's chunks.

Pure evaluation (forwards under ``no_grad`` but for the loss itself); the study writes the
tables.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tide_lightning.method.losses.chunk_losses import (
    calm_loss,
    chunk_log_probs,
    reverse_calm_loss,
)
from tide_lightning.method.losses.rowwise import gold_log_probs
from tide_lightning.method.masking import (
    apply_mask,
    chunk_consistent_mask,
    complementary_inputs,
    complementary_split,
    merge_complementary,
    num_chunks_of,
    sample_mask,
    sample_time,
)
from tide_lightning.method.schedules import tidal_lambda


def _scores(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: top-1 correct (Float[N], 0/1) and NLL of the target (Float[N])."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    correct = (logits.argmax(-1) == targets).float()
    return correct, -logp.gather(-1, targets[:, None])[:, 0]


@torch.no_grad()
def teacher_by_t(
    teacher, batches: list[dict[str, Tensor]], bins: int = 5, seed: int = 0
) -> dict[str, Tensor]:
    """Teacher accuracy and NLL on masked tokens, plain and with CompDemo, per t bin.

    Each sequence gets ``t`` stratified over the bins (so every bin is filled), tokens are
    masked with probability ``t``, and the same masks feed both measurements.

    Args:
        teacher: a frozen teacher (``logits(ids, logits_at, attention_mask=None)``,
            ``mask_token_id``) that reads the batches' ``input_ids``.
        batches: shared-pipeline batches (``input_ids``, ``maskable``, ``attention_mask``).
        bins: equal-width t bins over (0, 1).
        seed: seed of times, masks and CompDemo splits.

    Returns:
        ``centers`` Float[bins] and, each Float[bins]: ``acc_plain``, ``acc_compdemo``,
        ``nll_plain``, ``nll_compdemo`` (means over the masked tokens of the bin), and
        ``count`` (masked tokens per bin).
    """
    gen = torch.Generator().manual_seed(seed)
    sums = torch.zeros(5, bins, dtype=torch.float64)  # acc_p, acc_c, nll_p, nll_c, count
    for batch in batches:
        x0, maskable = batch["input_ids"], batch["maskable"]
        rows = x0.shape[0]
        strata = torch.arange(rows) % bins
        t = ((strata + torch.rand(rows, generator=gen)) / bins).clamp(1e-3, 1 - 1e-3)
        masked = sample_mask(x0, maskable, t, gen)
        if not masked.any():
            continue
        attention = batch.get("attention_mask")
        plain = teacher.logits(
            apply_mask(x0, masked, teacher.mask_token_id), masked, attention_mask=attention
        )
        half_a, half_b = complementary_split(masked, 0.5, gen)
        ids, wanted = complementary_inputs(x0, half_a, half_b, teacher.mask_token_id)
        pair = None if attention is None else torch.cat([attention, attention])
        comp = merge_complementary(teacher.logits(ids, wanted, attention_mask=pair), half_a, half_b)
        targets = x0[masked]
        which = torch.clamp((t * bins).long(), max=bins - 1)[:, None].expand_as(masked)[masked]
        for row, values in enumerate((*_scores(plain, targets), *_scores(comp, targets))):
            slot = (0, 2, 1, 3)[row]  # acc_p, nll_p, acc_c, nll_c -> their rows in sums
            sums[slot].index_add_(0, which, values.double())
        sums[4].index_add_(0, which, torch.ones_like(which, dtype=torch.float64))
    count = sums[4].clamp(min=1)
    return {
        "centers": (torch.arange(bins) + 0.5) / bins,
        "acc_plain": (sums[0] / count).float(),
        "acc_compdemo": (sums[1] / count).float(),
        "nll_plain": (sums[2] / count).float(),
        "nll_compdemo": (sums[3] / count).float(),
        "count": sums[4].float(),
    }


def mechanism_table(
    measured: dict[str, Tensor],
    lambda_init: float = 0.1,
    lambda_max: float = 0.9,
    shape: str = "cosine",
    axis: str = "both",
) -> str:
    """Markdown: per t bin the teacher's accuracy/NLL plain and with CompDemo, and lambda_t."""
    centers = measured["centers"]
    lam = {p: tidal_lambda(centers, p, lambda_init, lambda_max, shape, axis) for p in (0.5, 1.0)}
    lines = [
        "| t | masked tokens | teacher acc | acc with CompDemo | NLL | NLL with CompDemo "
        "| lambda_t at p=0.5 | lambda_t at p=1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(centers.tolist()):
        lines.append(
            f"| {c:.1f} | {int(measured['count'][i])} | {measured['acc_plain'][i]:.3f} | "
            f"{measured['acc_compdemo'][i]:.3f} | {measured['nll_plain'][i]:.3f} | "
            f"{measured['nll_compdemo'][i]:.3f} | {lam[0.5][i]:.3f} | {lam[1.0][i]:.3f} |"
        )
    return "\n".join(lines)


def _grid(values: Tensor, selected: Tensor) -> Tensor:
    return torch.zeros(selected.shape).masked_scatter(selected, values.float())


def chunk_gradient_norms(student_lp: Tensor, teacher_lp: Tensor, temperature: float) -> dict:
    """Gradient norms of CALM and Reverse CALM with respect to the student's chunk log-probs.

    With respect to ``LP_c`` (what reaches the logits, ``ds/dLP = s / T``) a chunk's CALM
    gradient is ``(s - t) / ((1 - s) T)``, unbounded as the student grows sure (s -> 1), and
    Reverse CALM's is ``-logit(t) s / T``, bounded by the teacher and zero at t = 0.5.

    Args:
        student_lp: Float[C] student ``LP_c`` of the active chunks.
        teacher_lp: Float[C] teacher ``LP_c``.
        temperature: ``T`` of the chunk probabilities.

    Returns:
        ``{"calm": float, "reverse_calm": float}``: the L2 norm of d loss / d LP over C.
    """
    norms = {}
    for name, loss in (("calm", calm_loss), ("reverse_calm", reverse_calm_loss)):
        lp = student_lp.detach().float().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(lp, teacher_lp.float(), temperature), lp)
        norms[name] = float(grad.norm())
    return norms


@torch.no_grad()
def chunk_lps(student, teacher, batch: dict[str, Tensor], block_size: int, gen) -> tuple:
    """Student and teacher ``LP_c`` of the active chunks of one cross batch, as in training.

    Returns:
        ``(student_lp, teacher_lp)``: Float[C] each.
    """
    x0, maskable = batch["input_ids"], batch["maskable"]
    s_ids, t_ids = batch["student_chunk_ids"], batch["teacher_chunk_ids"]
    chunks = num_chunks_of(s_ids, t_ids)
    t = sample_time(x0.shape[0], 1e-3, gen)
    drawn = sample_mask(x0, maskable, t, gen)
    masked, t_masked, _, active = chunk_consistent_mask(drawn, maskable, s_ids, t_ids, chunks)
    logits = student.forward_train(
        apply_mask(x0, masked, student.mask_token_id), x0, masked, block_size,
        batch.get("attention_mask"),
    )  # fmt: skip
    tx0 = batch["teacher_input_ids"]
    t_logits = teacher.logits(
        apply_mask(tx0, t_masked, teacher.mask_token_id), t_masked,
        attention_mask=batch.get("teacher_attention_mask"),
    )  # fmt: skip
    student_tok = _grid(gold_log_probs(logits, x0[masked]), masked)
    teacher_tok = _grid(gold_log_probs(t_logits, tx0[t_masked]), t_masked)
    return (
        chunk_log_probs(student_tok, s_ids, chunks)[active],
        chunk_log_probs(teacher_tok, t_ids, chunks)[active],
    )


def term_gradient_norms(student, teacher, batch, objective, progress: float, gen) -> dict:
    """Gradient norms over the student's parameters of the CE and the distillation term.

    One step of ``objective`` on ``batch`` at training progress ``progress``; nothing is
    updated. The distillation norm is the weighted term's (``distill_weight * distill``).

    Returns:
        ``{"ce": float, "distill": float}``.
    """
    from tide_lightning.method.objective import distill_step

    params = [p for p in student.parameters() if p.requires_grad]
    out = distill_step(student, teacher, batch, objective, progress, gen, pipeline="shared")
    norms = {}
    for name, term in (("ce", out.ce), ("distill", objective.distill_weight * out.distill)):
        if not term.requires_grad:  # the ce variant's distillation term is a constant 0
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return norms
