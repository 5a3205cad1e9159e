"""The per-batch algorithm (docs/method.md) as one function, shared by training and validation.

:func:`distill_step` draws times and masks, runs the student, the teacher passes
(CompDemo's two passes as one batched forward of ``2B`` rows) and the losses from the
variant registry, and returns every term so the LightningModule only logs. It knows
nothing about Lightning or the config layer: its inputs are tensors, the two models (the
:class:`~tide_lightning.method.interfaces.Student` and
:class:`~tide_lightning.method.interfaces.Teacher` protocols, which also carry the mask
ids), an :class:`ObjectiveConfig` of plain values and the pipeline.

:class:`ObjectiveConfig` is the ``objective`` group of the run config itself, defined here
because this package never imports the config layer (config.py re-uses it): the
YAML keys, their defaults, their checks and what this function reads are one definition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from tide_lightning.errors import ConfigError, require, require_choice
from tide_lightning.method.interfaces import Student, Teacher
from tide_lightning.method.losses import (
    chunk_log_probs,
    chunk_probs,
    gold_log_probs,
    kl_per_position,
    masked_diffusion_ce,
)
from tide_lightning.method.masking import (
    apply_mask,
    chunk_consistent_mask,
    complementary_chunk_split,
    complementary_inputs,
    complementary_split,
    expand_block_time,
    merge_complementary,
    num_chunks_of,
    sample_mask,
    sample_time,
)
from tide_lightning.method.schedules import AXES, SHAPES, TIME_WEIGHTS, tidal_lambda, time_weight
from tide_lightning.method.teacher_view import aligned_teacher_logits
from tide_lightning.method.variants import PIPELINE_DEFAULTS, PIPELINES, Variant, get_variant


@dataclass(frozen=True)
class ObjectiveConfig:
    """The ``objective`` config group: what one training step optimises.

    Every value is checked on construction (a bad one raises
    :class:`~tide_lightning.errors.ConfigError` naming ``objective.<key>``). ``None`` marks
    a per-pipeline default; :meth:`resolved` fills those in (the config does it at load,
    so ``print-config`` shows the effective values).
    """

    variant: str = "tide_shared"
    """Training variant (registry in method/variants.py): ce, kl, reverse_kl, tide_shared,
    tide_cross_shared (shared pipeline); calm, tide_cross, tide_shared_chunk,
    reverse_tide_shared_chunk (cross); token-level terms joined by "+" (tide_shared+kl)."""
    block_size: int = 32
    """Student block size: tokens denoised together; data.max_length is a multiple of it."""
    temperature: float | None = None
    """Distillation temperature (> 0); None: 2.0 shared, 5.0 cross (the published runs)."""
    distill_weight: float = 1.0
    """Weight of the distillation term (>= 0): loss = ce + distill_weight * distill."""
    compdemo: bool | None = None
    """CompDemo (teacher sees the complementary mask half); None: the variant's default."""
    compdemo_ratio: float = 0.5
    """Share of the masked positions in CompDemo's first half, in (0, 1)."""
    lambda_init: float = 0.1
    """TIDAL trust at the start of training, in [0, 1]."""
    lambda_max: float = 0.9
    """TIDAL trust at the end of training, in [lambda_init, 1]."""
    lambda_shape: str = "cosine"
    """Training-axis ramp from lambda_init to lambda_max: cosine or linear."""
    tidal_axis: str = "both"
    """TIDAL axes: both, training_only (TAID's schedule) or timestep_only."""
    time_weight: str | None = None
    """TIDAL weight over diffusion time: midrange or uniform; None: midrange shared, uniform
    cross (the published runs)."""
    time_eps: float = 1e-3
    """Smallest diffusion time, in (0, 1): t = time_eps + (1 - time_eps) * u, u ~ U[0, 1)."""
    per_block_time: bool = False
    """One diffusion time per block (BD3LM) instead of one per sequence."""
    shared_vocab_size: int | None = None
    """Token losses compare the first shared_vocab_size logits (> 0); None: the teacher
    kind's shared vocabulary if it has one, else the smaller of the two vocabularies."""

    def __post_init__(self) -> None:
        try:
            get_variant(self.variant)
        except ValueError as err:
            raise ConfigError(f"objective.variant: {err}") from None
        require(self.block_size > 0, "objective.block_size", "> 0", self.block_size)
        t = self.temperature
        require(t is None or t > 0, "objective.temperature", "> 0 (or null)", t)
        w = self.distill_weight
        require(w >= 0, "objective.distill_weight", ">= 0", w)
        r = self.compdemo_ratio
        require(0 < r < 1, "objective.compdemo_ratio", "in (0, 1)", r)
        require(0 <= self.lambda_init <= 1, "objective.lambda_init", "in [0, 1]", self.lambda_init)
        require(
            self.lambda_init <= self.lambda_max <= 1,
            "objective.lambda_max",
            f"in [objective.lambda_init={self.lambda_init}, 1]",
            self.lambda_max,
        )
        require_choice("objective.lambda_shape", self.lambda_shape, SHAPES)
        require_choice("objective.tidal_axis", self.tidal_axis, AXES)
        if self.time_weight is not None:
            require_choice("objective.time_weight", self.time_weight, TIME_WEIGHTS)
        require(0 < self.time_eps < 1, "objective.time_eps", "in (0, 1)", self.time_eps)
        v = self.shared_vocab_size
        require(v is None or v > 0, "objective.shared_vocab_size", "> 0 (or null)", v)

    @property
    def spec(self) -> Variant:
        """The variant's registry entry (what its loss is, whether it needs a teacher)."""
        return get_variant(self.variant)

    def resolved(self, pipeline: str) -> ObjectiveConfig:
        """This objective with its per-pipeline defaults filled in: the effective values.

        User-given values are kept as they are; only ``None`` fields change (temperature
        and time weight from :data:`~tide_lightning.method.variants.PIPELINE_DEFAULTS`,
        CompDemo from the variant). ``shared_vocab_size`` stays: it depends on the teacher.

        Raises:
            ConfigError: unknown pipeline, or a variant that does not run in it.
        """
        require_choice("pipeline", pipeline, PIPELINES)
        try:
            variant = get_variant(self.variant, pipeline)
        except ValueError as err:
            raise ConfigError(f"objective.variant: {err}") from None
        defaults = PIPELINE_DEFAULTS[pipeline]
        given = {"temperature": self.temperature, "time_weight": self.time_weight}
        filled = {key: defaults[key] if value is None else value for key, value in given.items()}
        filled["compdemo"] = variant.compdemo if self.compdemo is None else self.compdemo
        if all(getattr(self, key) == value for key, value in filled.items()):
            return self
        return dataclasses.replace(self, **filled)


@dataclass
class StepOutput:
    """Every term of one step; scalars are float32 tensors."""

    loss: Tensor
    ce: Tensor
    distill: Tensor
    mask_rate: Tensor
    lambda_t_mean: Tensor
    kl_to_teacher: Tensor | None = None
    """Forward KL at T = 1 per masked position, Float[N] (shared pipeline)."""
    kl_t: Tensor | None = None
    """The diffusion time of each ``kl_to_teacher`` entry (shared) or chunk (cross)."""
    chunk_kl: Tensor | None = None
    """Bernoulli KL between teacher and student chunk probabilities, Float[C_active]."""
    teacher_finite: bool = True
    terms: dict[str, Tensor] | None = None
    """A composite variant's terms by name (they add up to ``distill``); None otherwise."""
    distill_student: Tensor | None = None
    """What the distillation term reads of the student, with its graph: Float[N, V'] logits
    at the distilled positions (token level) or Float[C_active] chunk ``LP_c`` (chunk
    level); the gradient-norm diagnostics differentiate ``distill`` with respect to it."""
    distill_teacher: Tensor | None = None
    """The teacher's counterpart of ``distill_student`` (no gradient), same shape."""


def _draw_time(batch: int, length: int, s: ObjectiveConfig, gen, device) -> Tensor:
    if not s.per_block_time:
        return sample_time(batch, s.time_eps, gen, device=device)
    blocks = -(-length // s.block_size)
    per_block = sample_time(batch, s.time_eps, gen, per_block=blocks, device=device)
    return expand_block_time(per_block, length, s.block_size)


def _position_time(t: Tensor, selected: Tensor) -> Tensor:
    """Diffusion time of each selected position, Float[N]."""
    return (t[:, None].expand_as(selected) if t.dim() == 1 else t)[selected]


def _shared_vocab(student: Tensor, teacher: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
    vocab = min(student.shape[-1], teacher.shape[-1], limit or student.shape[-1])
    return student[:, :vocab], teacher[:, :vocab]


def _zero(like: Tensor) -> Tensor:
    return like.new_zeros((), dtype=torch.float32)


def distill_step(
    student: Student,
    teacher: Teacher | None,
    batch: dict[str, Tensor],
    objective: ObjectiveConfig,
    progress: float,
    generator: torch.Generator | None = None,
    *,
    pipeline: str,
) -> StepOutput:
    """Run one training (or validation) step of the selected variant.

    Args:
        student: the model being trained (its ``mask_token_id`` masks the student input).
        teacher: the frozen teacher (its ``mask_token_id`` masks the teacher input), or
            None for the ``ce`` variant.
        batch: the collated batch: ``input_ids`` Long[B, L], ``maskable`` Bool[B, L],
            optional ``attention_mask`` Bool[B, L]; cross adds ``teacher_input_ids``
            Long[B, L'], ``student_chunk_ids`` Long[B, L], ``teacher_chunk_ids`` Long[B, L'];
            the shared pipeline's aligned teacher view adds ``teacher_input_ids`` Long[B, L'],
            ``teacher_attention_mask`` Bool[B, L'] and ``aligned_teacher_pos`` Long[B, L]
            (:mod:`tide_lightning.method.teacher_view`).
        objective: the objective; its ``None`` defaults are resolved for ``pipeline``.
        progress: ``global_step / total_steps`` in [0, 1], TIDAL's training axis.
        generator: RNG for times, masks and CompDemo splits (fixed in validation).
        pipeline: "shared" (one tokenizer) or "cross" (chunk losses across tokenizers).

    Returns:
        A :class:`StepOutput`; ``loss = ce + distill_weight * distill``.
    """
    s = objective.resolved(pipeline)
    if s.spec.needs_teacher and teacher is None:
        raise ValueError(f"variant {s.variant!r} needs a teacher")
    if pipeline == "cross":
        return _cross_step(student, teacher, batch, s, progress, generator)
    return _shared_step(student, teacher, batch, s, progress, generator)


def _student_pass(student, batch, masked: Tensor, t: Tensor, s: ObjectiveConfig):
    """Student logits at ``masked`` (Float[N, V]), the CE term, and the mask rate."""
    x0, maskable = batch["input_ids"], batch["maskable"]
    xt = apply_mask(x0, masked, student.mask_token_id)
    logits = student.forward_train(xt, x0, masked, s.block_size, batch.get("attention_mask"))
    ce = masked_diffusion_ce(logits, x0, masked, t, maskable)
    return logits, ce, masked.sum() / maskable.sum().clamp(min=1)


def _shared_step(student, teacher, batch, s: ObjectiveConfig, progress, gen) -> StepOutput:
    x0, maskable = batch["input_ids"], batch["maskable"]
    attention_mask = batch.get("attention_mask")
    t = _draw_time(x0.shape[0], x0.shape[1], s, gen, x0.device)
    masked = sample_mask(x0, maskable, t, gen)
    logits, ce, mask_rate = _student_pass(student, batch, masked, t, s)
    variant = s.spec
    if not variant.needs_teacher:
        return StepOutput(ce, ce, _zero(ce), mask_rate, _zero(ce))

    if "aligned_teacher_pos" in batch:
        # The teacher reads its own rendering (aligned view): distil only the masked
        # positions with a teacher counterpart; |M| counts those.
        distilled = masked & (batch["aligned_teacher_pos"] >= 0)
        teacher_logits = aligned_teacher_logits(
            teacher, batch, distilled, s.compdemo, s.compdemo_ratio, gen
        )
        logits = logits[distilled[masked]]
    elif s.compdemo:
        distilled = masked
        half_a, half_b = complementary_split(masked, s.compdemo_ratio, gen)
        ids, wanted = complementary_inputs(x0, half_a, half_b, teacher.mask_token_id)
        pair = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        both = teacher.logits(ids, wanted, attention_mask=pair, clean_ids=torch.cat([x0, x0]))
        teacher_logits = merge_complementary(both, half_a, half_b)
    else:
        distilled = masked
        teacher_ids = apply_mask(x0, masked, teacher.mask_token_id)
        teacher_logits = teacher.logits(
            teacher_ids, masked, attention_mask=attention_mask, clean_ids=x0
        )
    student_v, teacher_v = _shared_vocab(logits, teacher_logits, s.shared_vocab_size)
    t_pos = _position_time(t, distilled)
    lam = tidal_lambda(t_pos, progress, s.lambda_init, s.lambda_max, s.lambda_shape, s.tidal_axis)
    weight = time_weight(t_pos, s.time_weight)
    terms = variant.term_losses(
        student_v, teacher_v, lam=lam, weight=weight, temperature=s.temperature
    )
    distill = sum(terms.values())
    lam_mean = lam.mean() if lam.numel() else _zero(ce)
    # The diagnostic KL is NaN/inf in exactly the rows where the teacher's logits are
    # (+inf or NaN): checking Float[N] spares a second pass over Float[N, V].
    kl = kl_per_position(student_v, teacher_v)
    return StepOutput(
        loss=ce + s.distill_weight * distill,
        ce=ce,
        distill=distill,
        mask_rate=mask_rate,
        lambda_t_mean=lam_mean if variant.uses_tidal else _zero(ce),
        kl_to_teacher=kl,
        kl_t=t_pos,
        teacher_finite=bool(torch.isfinite(kl).all()),
        terms=terms if variant.terms else None,
        distill_student=student_v,
        distill_teacher=teacher_v,
    )


def _token_grid(values: Tensor, selected: Tensor) -> Tensor:
    """Scatter Float[N] values into a zero Float[B, L] grid at ``selected`` (differentiable)."""
    return torch.zeros(selected.shape, dtype=values.dtype, device=values.device).masked_scatter(
        selected, values
    )


def _cross_step(student, teacher, batch, s: ObjectiveConfig, progress, gen) -> StepOutput:
    x0, maskable = batch["input_ids"], batch["maskable"]
    s_chunks, t_chunks = batch["student_chunk_ids"], batch["teacher_chunk_ids"]
    num_chunks = num_chunks_of(s_chunks, t_chunks)
    t = _draw_time(x0.shape[0], x0.shape[1], s, gen, x0.device)
    drawn = sample_mask(x0, maskable, t, gen)
    masked, teacher_masked, chunk_masked, active = chunk_consistent_mask(
        drawn, maskable, s_chunks, t_chunks, num_chunks
    )
    logits, ce, mask_rate = _student_pass(student, batch, masked, t, s)
    variant = s.spec
    if not variant.needs_teacher:
        return StepOutput(ce, ce, _zero(ce), mask_rate, _zero(ce))

    tx0 = batch["teacher_input_ids"]
    t_attention = batch.get("teacher_attention_mask")
    if s.compdemo:
        _, _, half_a, half_b = complementary_chunk_split(
            chunk_masked, s_chunks, t_chunks, s.compdemo_ratio, gen
        )
        ids, wanted = complementary_inputs(tx0, half_a, half_b, teacher.mask_token_id)
        pair = None if t_attention is None else torch.cat([t_attention, t_attention])
        both = teacher.logits(ids, wanted, attention_mask=pair, clean_ids=torch.cat([tx0, tx0]))
        targets = torch.cat([tx0, tx0])[wanted]
        grid = _token_grid(gold_log_probs(both, targets), wanted)
        teacher_token_lp = grid[: tx0.shape[0]] + grid[tx0.shape[0] :]
    else:
        ids = apply_mask(tx0, teacher_masked, teacher.mask_token_id)
        teacher_logits = teacher.logits(
            ids, teacher_masked, attention_mask=t_attention, clean_ids=tx0
        )
        teacher_token_lp = _token_grid(
            gold_log_probs(teacher_logits, tx0[teacher_masked]), teacher_masked
        )
    teacher_lp = chunk_log_probs(teacher_token_lp, t_chunks, num_chunks)[active]
    student_token_lp = _token_grid(gold_log_probs(logits, x0[masked]), masked)
    student_lp = chunk_log_probs(student_token_lp, s_chunks, num_chunks)[active]

    t_chunk = (
        t[:, None].expand_as(active)[active] if t.dim() == 1 else _chunk_time(t, s_chunks, active)
    )
    lam = tidal_lambda(t_chunk, progress, s.lambda_init, s.lambda_max, s.lambda_shape, s.tidal_axis)
    weight = time_weight(t_chunk, s.time_weight)
    distill = variant.loss(
        student_lp, teacher_lp, lam=lam, weight=weight, temperature=s.temperature
    )
    return StepOutput(
        loss=ce + s.distill_weight * distill,
        ce=ce,
        distill=distill,
        mask_rate=mask_rate,
        lambda_t_mean=lam.mean() if variant.uses_tidal and lam.numel() else _zero(ce),
        chunk_kl=chunk_bernoulli_kl(student_lp.detach(), teacher_lp),
        kl_t=t_chunk,
        teacher_finite=bool(torch.isfinite(teacher_lp).all()),
        distill_student=student_lp,
        distill_teacher=teacher_lp,
    )


def _chunk_time(t: Tensor, chunk_ids: Tensor, active: Tensor) -> Tensor:
    """Per-block times Float[B, L] -> the mean time of each active chunk's tokens, Float[C_active]."""
    num_chunks = active.shape[1]
    # chunk_log_probs is a per-chunk scatter-sum; here it sums times and token counts.
    total = chunk_log_probs(t, chunk_ids, num_chunks)
    count = chunk_log_probs(torch.ones_like(t), chunk_ids, num_chunks)
    return (total / count.clamp(min=1))[active]


@torch.no_grad()
def chunk_bernoulli_kl(student_lp: Tensor, teacher_lp: Tensor) -> Tensor:
    """``KL(Bern(t_c) || Bern(s_c))`` per chunk at temperature 1 (a diagnostic), Float[C]."""
    s = chunk_probs(student_lp, 1.0)
    t = chunk_probs(teacher_lp, 1.0)
    return t * (t.log() - s.log()) + (1 - t) * (torch.log1p(-t) - torch.log1p(-s))
