"""The paper's mechanisms measured on a teacher directly, binned by diffusion time t.

- CompDemo's claim: a teacher that sees the complementary half of the masked set predicts
  the other half better, most of all under heavy masking. Measured: the teacher's top-1
  accuracy and NLL on the masked tokens with every masked token hidden (one pass) and with
  CompDemo's two passes (each half read while the other half is revealed).
- TIDAL's premise: the trust ``lambda_t`` should fall where the teacher is unreliable.
  Measured: the teacher's accuracy per t bin next to ``lambda_t``, so the schedule can be
  judged against the teacher's real reliability.
- Reverse CALM's claim: its gradient is bounded by the teacher. Measured: the norm of the
  gradient of the CALM and of the Reverse CALM loss with respect to the student's chunk
  log-probabilities, per batch.

One implementation serves both places that measure: the study after training
(:func:`teacher_by_t` over the validation batches, :func:`chunk_gradient_norms`) and every
validation of a run (the LightningModule calls :func:`teacher_sums` per batch and
:func:`chunk_gradient_norms` on the batch's own chunks, and reduces the sums over ranks);
:class:`GradientNormProbe` reads ``train/distill_grad_norm`` off each training step's own
backward. Pure evaluation otherwise (forwards under ``no_grad`` but for the loss itself).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from tide_lightning.method.losses.chunk_losses import calm_loss, reverse_calm_loss
from tide_lightning.method.masking import (
    apply_mask,
    chunk_consistent_mask,
    chunk_to_token,
    complementary_chunk_split,
    complementary_inputs,
    complementary_split,
    merge_complementary,
    num_chunks_of,
    sample_mask,
)
from tide_lightning.method.schedules import tidal_lambda
from tide_lightning.method.teacher_view import to_teacher
from tide_lightning.training.metrics import bin_names

SUM_ROWS = ("acc_plain", "acc_compdemo", "nll_plain", "nll_compdemo", "count")
"""The rows of :func:`teacher_sums`: sums over a bin's scored tokens, then their count."""

_SCORE_ROWS = 1024  # rows of float32 log-softmax at a time: bounded memory at 150k vocabularies


def stratified_time(
    rows: int, bins: int, generator=None, first_row: int = 0, device=None
) -> Tensor:
    """One time per row, row ``r`` drawn uniformly inside bin ``(first_row + r) % bins``.

    Every bin gets rows whatever the batch size (plain ``U(0, 1)`` times would leave bins
    of a small validation empty); ``first_row`` rotates the bins across batches.

    Returns:
        Float[rows] in ``[1e-3, 1 - 1e-3]``.
    """
    strata = (first_row + torch.arange(rows, device=device)) % bins
    u = torch.rand(rows, generator=generator, device=device)
    return ((strata + u) / bins).clamp(1e-3, 1 - 1e-3)


@dataclass(frozen=True)
class MaskedView:
    """What the teacher reads in one measurement: its own clean ids and the masks.

    Attributes:
        ids: Long[B, Lt] clean teacher ids.
        masked: Bool[B, Lt] hidden in the plain pass.
        half_a, half_b: Bool[B, Lt] CompDemo's halves, a partition of ``masked``.
        scored: Bool[B, Lt], a subset of ``masked``: the tokens whose accuracy is counted.
        attention_mask: Bool[B, Lt] real tokens, or None.
    """

    ids: Tensor
    masked: Tensor
    half_a: Tensor
    half_b: Tensor
    scored: Tensor
    attention_mask: Tensor | None


def masked_view(
    batch: dict[str, Tensor], pipeline: str, t: Tensor, generator=None, ratio: float = 0.5
) -> MaskedView:
    """The teacher-side masks of one batch at per-row times ``t``, as training draws them.

    - shared pipeline, teacher reading the student's sequence: each maskable token hidden
      with probability ``t``; CompDemo's halves drawn per token (docs/method.md §8).
    - shared pipeline, aligned teacher view (``aligned_teacher_pos`` in the batch): the
      same on the teacher's own rendering (``teacher_input_ids``), at the teacher
      positions aligned to maskable student tokens (the positions training distils).
    - cross pipeline: chunk-consistent masks as in training (student tokens drawn with
      probability ``t``, every chunk holding one hidden on both sides, CompDemo's halves
      drawn per chunk, docs/method.md §9), scored on the teacher's own tokens of the
      active chunks (the chunks the chunk losses read). The bins are the sequence's
      drawn ``t``; the teacher's share of hidden tokens is higher (whole chunks).

    Args:
        batch: a collated batch of ``pipeline``.
        pipeline: "shared" or "cross".
        t: Float[B] per-row times (:func:`stratified_time`).
        generator: RNG of the masks and halves.
        ratio: CompDemo's share of the first half.
    """
    x0, maskable = batch["input_ids"], batch["maskable"]
    if pipeline == "cross":
        s_ids, t_ids = batch["student_chunk_ids"], batch["teacher_chunk_ids"]
        chunks = num_chunks_of(s_ids, t_ids)
        drawn = sample_mask(x0, maskable, t, generator)
        _, hidden, chunk_masked, active = chunk_consistent_mask(
            drawn, maskable, s_ids, t_ids, chunks
        )
        _, _, half_a, half_b = complementary_chunk_split(
            chunk_masked, s_ids, t_ids, ratio, generator
        )
        scored = hidden & chunk_to_token(active, t_ids)
        tx0, attention = batch["teacher_input_ids"], batch.get("teacher_attention_mask")
        return MaskedView(tx0, hidden, half_a, half_b, scored, attention)
    if "aligned_teacher_pos" in batch:
        x0, attention = batch["teacher_input_ids"], batch.get("teacher_attention_mask")
        maskable = to_teacher(maskable, batch["aligned_teacher_pos"], x0.shape[1])
    else:
        attention = batch.get("attention_mask")
    hidden = sample_mask(x0, maskable, t, generator)
    half_a, half_b = complementary_split(hidden, ratio, generator)
    return MaskedView(x0, hidden, half_a, half_b, hidden, attention)


def _scores(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: top-1 correct (Float[N], 0/1) and NLL of the target (Float[N])."""
    correct, nll = [], []
    for start in range(0, targets.shape[0], _SCORE_ROWS):
        part, gold = logits[start : start + _SCORE_ROWS], targets[start : start + _SCORE_ROWS]
        logp = torch.log_softmax(part.float(), dim=-1)
        correct.append((part.argmax(-1) == gold).float())
        nll.append(-logp.gather(-1, gold[:, None])[:, 0])
    if not correct:
        empty = logits.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat(correct), torch.cat(nll)


@torch.no_grad()
def teacher_sums(
    teacher,
    batch: dict[str, Tensor],
    pipeline: str = "shared",
    bins: int = 5,
    generator=None,
    first_row: int = 0,
    ratio: float = 0.5,
) -> Tensor:
    """Teacher accuracy and NLL sums on one batch's masked tokens, plain and with CompDemo.

    Times are stratified over the bins (:func:`stratified_time`), masks drawn by
    :func:`masked_view`, and the same masks feed both measurements. The plain pass (every
    masked token hidden) and CompDemo's two passes run as one teacher call of ``3B`` rows,
    made even when nothing is masked (a sharded teacher needs every rank in every call).
    A clean-first teacher (WeDLM's layout) gets the clean ids it reads first.

    Args:
        teacher: a frozen teacher (``logits(ids, logits_at, attention_mask=, clean_ids=)``,
            ``mask_token_id``).
        batch: a collated batch of ``pipeline`` (see :func:`masked_view`).
        pipeline: "shared" or "cross".
        bins: equal-width t bins over (0, 1).
        generator: RNG of times, masks and halves (on the batch's device).
        first_row: the batch's first row in the whole measurement (rotates the strata).
        ratio: CompDemo's share of the first half.

    Returns:
        Float64[5, bins]: per bin the sums of :data:`SUM_ROWS` (accuracy and NLL summed
        over the scored tokens, then their count).
    """
    x0 = batch["input_ids"]
    t = stratified_time(x0.shape[0], bins, generator, first_row, x0.device)
    view = masked_view(batch, pipeline, t, generator, ratio)
    ids, mask_id = view.ids, teacher.mask_token_id
    comp_ids, comp_wanted = complementary_inputs(ids, view.half_a, view.half_b, mask_id)
    attention = None if view.attention_mask is None else view.attention_mask.repeat(3, 1)
    logits = teacher.logits(
        torch.cat([apply_mask(ids, view.masked, mask_id), comp_ids]),
        torch.cat([view.masked, comp_wanted]),
        attention_mask=attention,
        clean_ids=ids.repeat(3, 1),
    )
    n = int(view.masked.sum())
    keep = view.scored[view.masked]
    plain = logits[:n][keep]
    comp = merge_complementary(logits[n:], view.half_a, view.half_b)[keep]
    targets = ids[view.scored]
    row_bin = torch.clamp((t * bins).long(), max=bins - 1)
    which = row_bin[:, None].expand_as(view.scored)[view.scored]
    sums = torch.zeros(len(SUM_ROWS), bins, dtype=torch.float64, device=x0.device)
    acc_p, nll_p = _scores(plain, targets)
    acc_c, nll_c = _scores(comp, targets)
    for row, values in enumerate((acc_p, acc_c, nll_p, nll_c, torch.ones_like(acc_p))):
        sums[row].index_add_(0, which, values.double())
    return sums


def batch_fingerprint(batch: dict[str, Tensor]) -> str:
    """A digest of a batch's tensors (names, shapes, dtypes, values).

    Equal digests mean equal inputs, so :func:`teacher_sums` with the same teacher and
    seed would return the same sums (what lets validation reuse them).
    """
    digest = hashlib.sha1()
    for name in sorted(batch):
        value = batch[name]
        if isinstance(value, Tensor):
            digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
            flat = value.detach().reshape(-1).contiguous().cpu()
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def summarise(sums: Tensor) -> dict[str, Tensor]:
    """Means per bin from :func:`teacher_sums` (summed over batches and ranks).

    Returns:
        ``centers`` Float[bins] and, each Float[bins]: ``acc_plain``, ``acc_compdemo``,
        ``nll_plain``, ``nll_compdemo`` (means over the masked tokens of the bin, NaN where
        the bin is empty), and ``count`` (masked tokens per bin).
    """
    sums = sums.double().cpu()
    bins = sums.shape[1]
    count = sums[SUM_ROWS.index("count")]
    out = {"centers": (torch.arange(bins) + 0.5) / bins}
    for row, name in enumerate(SUM_ROWS[:-1]):
        out[name] = (sums[row] / count).float()
    out["count"] = count.float()
    return out


def teacher_by_t(
    teacher,
    batches: list[dict[str, Tensor]],
    bins: int = 5,
    seed: int = 0,
    pipeline: str = "shared",
) -> dict[str, Tensor]:
    """Teacher accuracy and NLL on masked tokens, plain and with CompDemo, per t bin.

    :func:`teacher_sums` over ``batches`` (one CPU generator seeded ``seed``), then
    :func:`summarise`. The study's measurement; validation accumulates the same sums.

    Returns:
        As :func:`summarise`.
    """
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(SUM_ROWS), bins, dtype=torch.float64)
    for batch in batches:
        total += teacher_sums(teacher, batch, pipeline, bins, gen).cpu()
    return summarise(total)


SCALARS = {
    "acc_plain": "teacher_acc",
    "acc_compdemo": "teacher_acc_compdemo",
    "nll_plain": "teacher_nll",
    "nll_compdemo": "teacher_nll_compdemo",
    "count": "masked_tokens",
}
""":func:`summarise` key -> TensorBoard scalar stem (``mech/<stem>_t0.0-0.2``, ...)."""


def mechanism_scalars(
    summary: dict[str, Tensor], lambda_t: Tensor | None = None, prefix: str = "mech"
) -> dict[str, float]:
    """TensorBoard scalars of one measurement, one per quantity and t bin, named by range.

    ``mech/teacher_acc_t0.0-0.2``, ``mech/teacher_acc_compdemo_t...``,
    ``mech/teacher_nll_t...``, ``mech/teacher_nll_compdemo_t...``,
    ``mech/masked_tokens_t...`` and, given ``lambda_t`` (Float[bins] at the bin centres),
    ``mech/lambda_t_t...``. Empty bins are left out (no NaN points).
    """
    bins = summary["centers"].numel()
    count = summary["count"]
    columns = {stem: summary[key] for key, stem in SCALARS.items()}
    if lambda_t is not None:
        columns["lambda_t"] = lambda_t
    scalars = {}
    for stem, values in columns.items():
        for i, name in enumerate(bin_names(bins, f"{prefix}/{stem}", sep="_t")):
            if count[i] > 0:
                scalars[name] = float(values[i])
    return scalars


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


def chunk_gradient_norms(student_lp: Tensor, teacher_lp: Tensor, temperature: float) -> dict:
    """Gradient norms of CALM and Reverse CALM with respect to the student's chunk log-probs.

    With respect to ``LP_c`` (what reaches the logits, ``ds/dLP = s / T``) a chunk's CALM
    gradient is ``(s - t) / ((1 - s) T)``, unbounded as the student grows sure (s -> 1), and
    Reverse CALM's is ``-logit(t) s / T``, bounded by the teacher and zero at t = 0.5. Both
    losses are means over the C chunks, so Reverse CALM's norm is at most
    ``log((1 - eps) / eps) / (T sqrt(C))`` (``eps`` the chunk clamp, docs/method.md §10).
    Runs autograd on detached copies, also inside validation's inference mode.

    Args:
        student_lp: Float[C] student ``LP_c`` of the active chunks.
        teacher_lp: Float[C] teacher ``LP_c``.
        temperature: ``T`` of the chunk probabilities.

    Returns:
        ``{"calm": float, "reverse_calm": float}``: the L2 norm of d loss / d LP over C.
    """
    norms = {}
    with torch.inference_mode(False), torch.enable_grad():
        teacher = teacher_lp.detach().float().clone()
        for name, loss in (("calm", calm_loss), ("reverse_calm", reverse_calm_loss)):
            lp = student_lp.detach().float().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(lp, teacher, temperature), lp)
            norms[name] = float(grad.norm())
    return norms


class GradientNormProbe:
    """``||d distill / d x||`` of a training step, read from the step's own backward.

    ``x`` is what the distillation term reads of the student (chunk ``LP_c``, or the logits
    at the distilled positions) and nothing else reads it, so the gradient reaching ``x``
    is ``c * d distill / d x``, ``c`` being the gradient reaching ``distill`` (the
    distillation weight, gradient accumulation's division, a loss scale). Two hooks read
    both; the norm is their ratio. No extra pass: the token losses compute their gradient
    once, in their forward, and allow a single backward.

    Args:
        distill: the distillation term (a scalar in the step's graph, with a nonzero
            weight in the loss).
        x: the student tensor it reads (requires grad).
    """

    def __init__(self, distill: Tensor, x: Tensor | None) -> None:
        self._scale: Tensor | None = None
        self._norm: Tensor | None = None
        if x is not None and distill.requires_grad and x.requires_grad:
            distill.register_hook(self._at_distill)
            x.register_hook(self._at_student)

    def _at_distill(self, grad: Tensor) -> None:
        self._scale = grad.detach().float().abs()

    def _at_student(self, grad: Tensor) -> None:
        if self._scale is not None:
            norm = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32)
            self._norm = norm / self._scale

    def value(self) -> Tensor | None:
        """The norm, once the backward has run (None before, or without a gradient)."""
        return self._norm


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
