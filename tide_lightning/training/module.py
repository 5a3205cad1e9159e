"""The DistillationModule: a thin LightningModule around :func:`objective.distill_step`.

It owns the student (the only trained module), holds the frozen and possibly sharded
teacher outside its module tree (so the teacher is never in the optimizer, the
checkpoint or DDP's reducer), logs every loss term, and draws its randomness from a
generator seeded by ``(seed, global_step, micro-batch, rank)`` so that a resumed run
continues the same loss curve without saving RNG state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric

from tide_lightning.config import OptimConfig
from tide_lightning.method.interfaces import Teacher
from tide_lightning.method.objective import ObjectiveConfig, StepOutput, distill_step
from tide_lightning.method.schedules import lambda_train, tidal_lambda
from tide_lightning.models.frozen import FrozenTeacher
from tide_lightning.training import mechanisms, plots
from tide_lightning.training.metrics import BinnedMean, SummedTable, bin_names
from tide_lightning.training.tensorboard import RunLogger

NUM_T_BINS = 10
MECHANISM_T_BINS = 5
"""t bins of the validation's teacher measurements (mech/teacher_acc_t0.0-0.2, ...)."""
MECHANISM_SALT = 0x6D656368
"""Seeds the mechanism passes' masks apart from the validation step's (val/ce unchanged)."""


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine down to ``min_lr_ratio``."""
    warmup = int(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class DistillationModule(L.LightningModule):
    """Trains ``student`` with the objective in ``objective`` against ``teacher``.

    Args:
        student: the block-diffusion student (``forward_train``).
        teacher: frozen teacher adapter (``logits``), a sharded one, or None for ``ce``.
        objective: what to optimise (its per-pipeline defaults are resolved here).
        optim: AdamW and its schedule: linear warmup, then cosine decay over ``total_steps``.
        pipeline: "shared" or "cross", as the data module's batches.
        total_steps: optimizer steps of the whole run (the LR schedule's and TIDAL's
            progress ``global_step / total_steps``).
        seed: base seed of the masking RNG.
        val_seed: base seed of validation's fixed masks.
        teacher_factory: a callable returning a :class:`FrozenTeacher`, called in ``setup``
            (after the process group exists, so it can be sharded) when ``teacher`` is None.
        teacher_label: how figures name the teacher (e.g. its checkpoint folder).
        mechanism_metrics: measure the paper's mechanisms (docs/study.md, Mechanisms): per
            training step ``train/distill_grad_norm``; per validation the teacher's
            accuracy and NLL on masked tokens by t, plain and with CompDemo (masks of
            their own; one extra teacher call of 3B rows per batch, at the process's
            first validation only), lambda_t per t bin, and for chunk variants the CALM
            and Reverse CALM gradient norms. Only with a teacher.
    """

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: Teacher | None,
        objective: ObjectiveConfig,
        optim: OptimConfig,
        pipeline: str = "shared",
        total_steps: int = 1000,
        seed: int = 0,
        val_seed: int = 1234,
        teacher_factory: Callable[[], FrozenTeacher] | None = None,
        teacher_label: str = "teacher",
        mechanism_metrics: bool = True,
    ) -> None:
        super().__init__()
        self.student = student
        if objective.spec.needs_teacher and teacher is None and teacher_factory is None:
            raise ValueError(f"variant {objective.variant!r} needs a teacher")
        self._teacher_factory = teacher_factory
        # A plain object, not a submodule: nothing of the teacher enters the optimizer,
        # the checkpoint or DDP's reducer, and trainer.fit's .train() never reaches it.
        self.teacher = None if teacher is None else FrozenTeacher.wrap(teacher)
        self.objective = objective.resolved(pipeline)
        self.optim, self.pipeline, self.total_steps = optim, pipeline, total_steps
        self.seed, self.val_seed = seed, val_seed
        self.teacher_label = teacher_label
        self.save_hyperparameters(
            {
                "objective": dataclasses.asdict(objective),
                "optim": dataclasses.asdict(optim),
                "seed": seed,
                "teacher": teacher_label,
            }
        )
        self.val_ce = MeanMetric()
        self.val_kl = MeanMetric()
        self.val_chunk_kl = MeanMetric()
        self.val_kl_by_t = BinnedMean(NUM_T_BINS)
        self.mechanism_metrics = mechanism_metrics and self.objective.spec.needs_teacher
        self.val_teacher = SummedTable(len(mechanisms.SUM_ROWS), MECHANISM_T_BINS)
        # Submodules (a ModuleDict), so their states follow the module's device and sync.
        names = ("calm", "reverse_calm")
        self.val_grad_mean = torch.nn.ModuleDict({n: MeanMetric() for n in names})
        self.val_grad_max = torch.nn.ModuleDict({n: MaxMetric() for n in names})
        self._teacher_cache: dict[int, tuple[str, Tensor]] = {}
        self.bad_steps = 0
        self._step_started = None
        self._step_tokens = 0
        self._distill_probe: mechanisms.GradientNormProbe | None = None
        self._loaded_step: int | None = None
        # (step, per-bin mean KL) of every validation so far: the KL-vs-t figure overlays
        # them; saved in checkpoints so a resumed run keeps drawing the whole history.
        self.kl_history: list[tuple[int, list[float]]] = []
        # This rank's trained tokens and time in training steps (forward, backward,
        # optimizer), for the closing summary.
        self.tokens_trained = 0
        self.train_seconds = 0.0

    # -- helpers ----------------------------------------------------------------------------

    def _generator(self, *salt: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(hash((*salt, self.global_rank)) & 0x7FFF_FFFF_FFFF_FFFF)
        return gen

    @property
    def log_step(self) -> int:
        """Optimizer steps behind the current weights: the global step while training,
        the loaded checkpoint's step when a checkpoint is validated on its own (where
        Lightning's global step is 0). Scalars and images of a validation use it."""
        if self._loaded_step is not None and self.global_step == 0:
            return self._loaded_step
        return self.global_step

    @property
    def progress(self) -> float:
        return min(self.log_step / max(self.total_steps, 1), 1.0)

    @property
    def _curve_label(self) -> str:
        """What the KL-vs-t history measures: quantity and teacher."""
        return f"{self.objective.spec.level} KL to {self.teacher_label}"

    @property
    def val_metric_names(self) -> tuple[str, ...]:
        """The validation scalars this variant logs (what the HParams view compares)."""
        level = self.objective.spec.level
        extra = {"token": ("val/kl_to_teacher",), "chunk": ("val/chunk_kl",)}.get(level, ())
        return ("val/ce", *extra)

    def _teacher_to_device(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def _run(self, batch: dict[str, Tensor], generator: torch.Generator) -> StepOutput:
        return distill_step(
            self.student,
            self.teacher,
            batch,
            self.objective,
            self.progress,
            generator,
            pipeline=self.pipeline,
        )

    # -- Lightning hooks, in Lightning's order ----------------------------------------------

    def setup(self, stage: str) -> None:
        if self.teacher is None and self._teacher_factory is not None:
            # DeepSpeed (teacher sharding) reads LOCAL_RANK, which srun does not set.
            os.environ.setdefault("LOCAL_RANK", str(self.local_rank))
            self.teacher = self._teacher_factory()

    def on_fit_start(self) -> None:
        self._teacher_to_device()
        if isinstance(self.logger, RunLogger):  # read by log_hyperparams, which runs next
            self.logger.metric_names = self.val_metric_names

    def on_validation_start(self) -> None:
        self._teacher_to_device()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int):
        accumulate = self.trainer.accumulate_grad_batches
        out = self._run(batch, self._generator(self.seed, self.global_step, batch_idx % accumulate))
        if self.teacher is not None:
            self.teacher.end_step()  # every rank made the same number of teacher calls
        finite = bool(torch.isfinite(out.loss)) and out.teacher_finite
        if self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return self._skip_step()
        self.bad_steps = 0
        tokens = (
            batch["attention_mask"].sum()
            if "attention_mask" in batch
            else batch["input_ids"].numel()
        )
        self._step_tokens = int(tokens)  # rated in on_train_batch_end, after the backward
        spec = self.objective.spec
        # Only the charts of terms this variant has: no distill/lambda for ce.
        logs = {"train/loss": out.loss, "train/ce": out.ce}
        if spec.needs_teacher:
            logs["train/distill"] = out.distill
        for name, value in (out.terms or {}).items():  # a composite's terms, one chart each
            logs[f"train/distill_{name}"] = value
        if spec.uses_tidal:
            logs["train/lambda_train"] = self._lambda_train()
            logs["train/lambda_t_mean"] = out.lambda_t_mean
        logs["train/mask_rate"] = out.mask_rate
        if out.kl_to_teacher is not None and out.kl_to_teacher.numel():
            logs["train/kl_to_teacher"] = out.kl_to_teacher.mean()
        if out.chunk_kl is not None and out.chunk_kl.numel():
            logs["train/chunk_kl"] = out.chunk_kl.mean()
        if self.mechanism_metrics and self.objective.distill_weight > 0:
            # Read from this step's backward: logged in on_train_batch_end.
            self._distill_probe = mechanisms.GradientNormProbe(out.distill, out.distill_student)
        self.log_dict(logs, on_step=True, batch_size=batch["input_ids"].shape[0])
        bar = {"loss": out.loss, "ce": out.ce}
        if spec.needs_teacher:
            bar["distill"] = out.distill
        self.log_dict(
            bar,
            prog_bar=True,
            logger=False,
            batch_size=batch["input_ids"].shape[0],
        )
        return out.loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        probe, self._distill_probe = self._distill_probe, None
        norm = None if probe is None else probe.value()
        if norm is not None:
            self.log("train/distill_grad_norm", norm, on_step=True, on_epoch=False)
        # Forward, backward and (on the last micro-batch) the optimizer step.
        if self._step_started is None or not self._step_tokens:
            return
        elapsed = max(time.perf_counter() - self._step_started, 1e-9)
        self.tokens_trained += self._step_tokens
        self.train_seconds += elapsed
        self.log("train/tokens_per_s", self._step_tokens / elapsed, on_step=True, on_epoch=False)
        self._step_tokens = 0

    def _lambda_train(self) -> float:
        o = self.objective
        return lambda_train(self.progress, o.lambda_init, o.lambda_max, o.lambda_shape)

    def _skip_step(self):
        self.bad_steps += 1
        self.log("train/skipped_steps", float(self.bad_steps), on_step=True)
        if self.bad_steps > self.optim.max_bad_steps:
            raise RuntimeError(
                f"{self.bad_steps} consecutive steps had a non-finite loss or teacher output "
                f"(global step {self.global_step}); stopping. Lower the learning rate, check "
                "the teacher checkpoint and precision, or raise optim.max_bad_steps."
            )
        return None

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self._run(batch, self._generator(self.val_seed, batch_idx))
        # Metric objects are logged as such: Lightning reduces them over all ranks at the
        # epoch's end (torchmetrics' own sync) and resets them. logger=False: the
        # TensorBoard scalars are written in on_validation_epoch_end, at log_step.
        epoch = {"on_step": False, "on_epoch": True, "logger": False}
        epoch["batch_size"] = batch["input_ids"].shape[0]
        self.val_ce.update(out.ce)
        self.log("val/ce", self.val_ce, prog_bar=True, **epoch)
        if out.kl_to_teacher is not None and out.kl_to_teacher.numel():
            self.val_kl.update(out.kl_to_teacher)
            self.val_kl_by_t.update(out.kl_to_teacher, out.kl_t)
            self.log("val/kl_to_teacher", self.val_kl, **epoch)
        if out.chunk_kl is not None and out.chunk_kl.numel():
            self.val_chunk_kl.update(out.chunk_kl)
            self.val_kl_by_t.update(out.chunk_kl, out.kl_t)
            self.log("val/chunk_kl", self.val_chunk_kl, **epoch)
        if self.mechanism_metrics and self.teacher is not None:
            self._chunk_gradients(out)
            del out  # the step's logits are not needed by the teacher passes
            self.val_teacher.update(self._teacher_sums(batch, batch_idx))

    def _teacher_sums(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The teacher's accuracy/NLL sums on this batch (:func:`mechanisms.teacher_sums`).

        The teacher is frozen and the masks are fixed, so a batch seen before gives the
        same sums: they are kept per batch (checked against a digest of the batch) and
        only the first validation of a process pays for the teacher passes.
        """
        key = mechanisms.batch_fingerprint(batch)
        cached = self._teacher_cache.get(batch_idx)
        hit = cached is not None and cached[0] == key
        # A sharded teacher needs every rank in every call: all ranks reuse, or none.
        if self.trainer.strategy.reduce_boolean_decision(hit, all=True):
            return cached[1]
        sums = mechanisms.teacher_sums(
            self.teacher,
            batch,
            self.pipeline,
            MECHANISM_T_BINS,
            self._generator(self.val_seed, batch_idx, MECHANISM_SALT),
            first_row=batch_idx * batch["input_ids"].shape[0],
            ratio=self.objective.compdemo_ratio,
        )
        self._teacher_cache[batch_idx] = (key, sums)
        return sums

    def _chunk_gradients(self, out: StepOutput) -> None:
        """CALM's and Reverse CALM's gradient norms on this batch's chunks, whichever trains.

        A batch without an active chunk counts with weight 0 (every rank updates, so every
        rank reduces).
        """
        if self.objective.spec.level != "chunk":
            return
        norms = mechanisms.chunk_gradient_norms(
            out.distill_student, out.distill_teacher, self.objective.temperature
        )
        weight = float(out.distill_student.numel() > 0)
        for name, value in norms.items():
            self.val_grad_mean[name].update(value, weight)
            self.val_grad_max[name].update(value)

    def on_validation_epoch_end(self) -> None:
        # Lightning would write epoch-level scalars at its loop counter, one step behind
        # the weights during fit and 0 when a checkpoint is validated on its own; they are
        # written here at log_step, the step of the images too. Every compute() below
        # reduces over all ranks (torchmetrics states, sum), so all ranks call it.
        step = self.log_step
        scalars = {}
        for name, metric in (
            ("val/ce", self.val_ce),
            ("val/kl_to_teacher", self.val_kl),
            ("val/chunk_kl", self.val_chunk_kl),
        ):
            if metric.update_count:
                scalars[name] = float(metric.compute())
        scalars |= self._mechanism_scalars(step)
        binned = self.val_kl_by_t
        if not binned.update_count:  # a ce run without a teacher: no KL curve
            self._log_scalars(scalars, step)
            return
        curve, std, counts = binned.compute().cpu(), binned.std().cpu(), binned.counts().cpu()
        binned.reset()
        for name, value in zip(bin_names(len(curve)), curve.tolist(), strict=True):
            if math.isfinite(value):
                scalars[name] = value
        self._log_scalars(scalars, step)
        if torch.isfinite(curve).any():
            self.kl_history = [h for h in self.kl_history if h[0] != step]
            self.kl_history.append((step, curve.tolist()))
        self._log_pictures(step, std, counts)

    def _mechanism_scalars(self, step: int) -> dict[str, float]:
        """The mech/* scalars of this validation (every rank reduces), and its figure."""
        if not self.val_teacher.update_count:
            return {}
        summary = mechanisms.summarise(self.val_teacher.compute())
        self.val_teacher.reset()
        o, lam = self.objective, None
        if o.spec.uses_tidal:
            lam = tidal_lambda(
                summary["centers"], self.progress, o.lambda_init, o.lambda_max, o.lambda_shape,
                o.tidal_axis,
            )  # fmt: skip
        scalars = mechanisms.mechanism_scalars(summary, lam)
        for name, mean in self.val_grad_mean.items():
            peak = self.val_grad_max[name]
            if mean.update_count:
                value, top = float(mean.compute()), float(peak.compute())
                if math.isfinite(value):  # NaN: no active chunk in the whole validation
                    scalars[f"mech/grad_norm_{name}"] = value
                    scalars[f"mech/grad_norm_{name}_max"] = top
            mean.reset()
            peak.reset()
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank == 0 and hasattr(writer, "add_image"):
            picture = plots.teacher_curve(
                summary["centers"].numpy(),
                summary["acc_plain"].numpy(),
                summary["acc_compdemo"].numpy(),
                summary["count"].numpy(),
                None if lam is None else lam.numpy(),
                teacher=self.teacher_label,
                step=step,
            )
            writer.add_image("mech/teacher_vs_lambda_t", picture, step, dataformats="HWC")
        return scalars

    def _log_scalars(self, scalars: dict[str, float], step: int) -> None:
        if self.global_rank == 0 and self.logger is not None and scalars:
            self.logger.log_metrics(scalars, step=step)

    def _log_pictures(self, step: int, std: Tensor, counts: Tensor) -> None:
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(writer, "add_image"):
            return
        o = self.objective
        if o.spec.uses_tidal:
            heat = plots.trust_heatmap(
                self.progress, o.lambda_init, o.lambda_max, o.lambda_shape, o.tidal_axis
            )
            writer.add_image("tidal/trust_heatmap", heat, step, dataformats="HWC")
        if self.kl_history and self.kl_history[-1][0] == step:
            quantity = "chunk KL" if o.spec.level == "chunk" else "token KL"
            picture = plots.kl_curve(
                self.val_kl_by_t.centers().numpy(),
                [(s, np.asarray(v, dtype=float)) for s, v in self.kl_history],
                std.numpy(),
                counts.numpy(),
                quantity=quantity,
                teacher=self.teacher_label,
            )
            writer.add_image("val/kl_vs_t", picture, step, dataformats="HWC")

    def configure_optimizers(self):
        o = self.optim
        params = [p for p in self.student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, self.total_steps, o.warmup_ratio, o.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        config = getattr(getattr(self.student, "model", None), "config", None)
        if config is not None:
            checkpoint["student_hf_config"] = config.to_dict()
        checkpoint["student_mask_token_id"] = self.student.mask_token_id
        checkpoint["kl_history"] = {"curve": self._curve_label, "points": self.kl_history}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called by fit (resume) and by validate/test: the latter do not restore the
        # global step, so the checkpoint's own step is kept for the logs.
        self._loaded_step = int(checkpoint.get("global_step", 0))
        saved = checkpoint.get("kl_history") or {}
        # A checkpoint validated against another teacher or quantity (the demo's probes)
        # starts its own history instead of overlaying curves of a different KL.
        if isinstance(saved, dict) and saved.get("curve") == self._curve_label:
            self.kl_history = [(int(s), list(v)) for s, v in saved["points"]]
