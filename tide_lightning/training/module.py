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

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from tide_lightning.config import OptimConfig
from tide_lightning.method.objective import ObjectiveConfig, StepOutput, distill_step
from tide_lightning.method.schedules import lambda_train
from tide_lightning.models.frozen import FrozenTeacher
from tide_lightning.training import plots
from tide_lightning.training.metrics import BinnedMean


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
    """

    def __init__(
        self,
        student: torch.nn.Module,
        teacher,
        objective: ObjectiveConfig,
        optim: OptimConfig,
        pipeline: str = "shared",
        total_steps: int = 1000,
        seed: int = 0,
        val_seed: int = 1234,
        teacher_factory=None,
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
        self.save_hyperparameters(
            {"objective": dataclasses.asdict(objective), "optim": dataclasses.asdict(optim)}
        )
        self.val_ce = MeanMetric()
        self.val_kl = MeanMetric()
        self.val_chunk_kl = MeanMetric()
        self.val_kl_by_t = BinnedMean(10)
        self.bad_steps = 0
        self._step_started = None

    # -- helpers ----------------------------------------------------------------------------

    def _generator(self, *salt: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(hash((*salt, self.global_rank)) & 0x7FFF_FFFF_FFFF_FFFF)
        return gen

    @property
    def progress(self) -> float:
        return min(self.global_step / max(self.total_steps, 1), 1.0)

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
        elapsed = time.perf_counter() - (self._step_started or time.perf_counter())
        logs = {
            "train/loss": out.loss,
            "train/ce": out.ce,
            "train/distill": out.distill,
            "train/lambda_train": self._lambda_train(),
            "train/lambda_t_mean": out.lambda_t_mean,
            "train/mask_rate": out.mask_rate,
            "train/tokens_per_s": float(tokens) / max(elapsed, 1e-9),
        }
        if out.kl_to_teacher is not None and out.kl_to_teacher.numel():
            logs["train/kl_to_teacher"] = out.kl_to_teacher.mean()
        if out.chunk_kl is not None and out.chunk_kl.numel():
            logs["train/chunk_kl"] = out.chunk_kl.mean()
        self.log_dict(logs, on_step=True, batch_size=batch["input_ids"].shape[0])
        self.log_dict(
            {"loss": out.loss, "ce": out.ce, "distill": out.distill},
            prog_bar=True,
            logger=False,
            batch_size=batch["input_ids"].shape[0],
        )
        return out.loss

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
        self.val_ce.update(out.ce)
        if out.kl_to_teacher is not None and out.kl_to_teacher.numel():
            self.val_kl.update(out.kl_to_teacher)
            self.val_kl_by_t.update(out.kl_to_teacher, out.kl_t)
        if out.chunk_kl is not None and out.chunk_kl.numel():
            self.val_chunk_kl.update(out.chunk_kl)
            self.val_kl_by_t.update(out.chunk_kl, out.kl_t)

    def on_validation_epoch_end(self) -> None:
        self.log("val/ce", self.val_ce.compute(), prog_bar=True, sync_dist=False)
        self.val_ce.reset()
        for name, metric in (
            ("val/kl_to_teacher", self.val_kl),
            ("val/chunk_kl", self.val_chunk_kl),
        ):
            if metric.update_count:
                self.log(name, metric.compute())
            metric.reset()
        curve = self.val_kl_by_t.compute().cpu()
        self.val_kl_by_t.reset()
        for i, value in enumerate(curve.tolist()):
            if math.isfinite(value):
                self.log(f"val_kl_by_t/bin_{i}", value)
        self._log_pictures(curve)

    def _log_pictures(self, curve: Tensor) -> None:
        writer = getattr(self.logger, "experiment", None)
        if self.global_rank != 0 or not hasattr(writer, "add_image"):
            return
        o = self.objective
        heat = plots.trust_heatmap(
            self.progress, o.lambda_init, o.lambda_max, o.lambda_shape, o.tidal_axis
        )
        writer.add_image("tidal/trust_heatmap", heat, self.global_step, dataformats="HWC")
        if torch.isfinite(curve).any():
            picture = plots.kl_curve(self.val_kl_by_t.centers().numpy(), curve.numpy())
            writer.add_image("val/kl_vs_t", picture, self.global_step, dataformats="HWC")

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
