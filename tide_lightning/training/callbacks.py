"""Small Trainer callbacks of the application (each one concern)."""

from __future__ import annotations

import math
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import ProgressBar

from tide_lightning.data import DistillDataModule

_SHOWN = ("loss", "ce", "distill", "val/ce")
"""Progress-bar metrics shown on the console, in this order."""


class DataSkipLogger(L.Callback):
    """Logs the records the data pipeline skipped, by reason, as ``data/skipped_<reason>``.

    Counts are this rank's totals since the start of training (restored on resume). A
    reason is written only once its count is non-zero, so a clean corpus adds no charts.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, DistillDataModule):
            return
        if trainer.global_step % max(trainer.log_every_n_steps, 1):
            return
        counts = datamodule.skip_counts("train")
        nonzero = {f"data/skipped_{reason}": float(n) for reason, n in counts.items() if n}
        if nonzero:
            pl_module.log_dict(nonzero, on_step=True, on_epoch=False)


def _metric_text(metrics: dict, names: tuple[str, ...] = _SHOWN) -> str:
    parts = []
    for name in names:
        value = metrics.get(name)
        if value is not None and math.isfinite(float(value)):
            parts.append(f"{name} {float(value):.4f}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class StepProgressBar(ProgressBar):
    """One console bar over the run's optimizer steps: ``global_step / max_steps``.

    Lightning's bars count batches per epoch and print ``Epoch 0/-2`` for step-based
    runs (``max_epochs=-1``); a distillation run is defined by its steps, so this bar is
    too (a resumed run starts at its step). Built on the public ``ProgressBar`` API.
    """

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.max_steps,
            initial=trainer.global_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            file=sys.stdout,
            # Redirected to a file, every redraw is a line of the log: redraw rarely.
            mininterval=0.1 if sys.stdout.isatty() else 30.0,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix_str(_metric_text(self.get_metrics(trainer, pl_module)), refresh=False)
        self._bar.update(trainer.global_step - self._bar.n)  # redraws at most every mininterval

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.set_description("validating", refresh=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.set_description("train")
            self._bar.set_postfix_str(_metric_text(self.get_metrics(trainer, pl_module)))

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class StepLogLine(L.Callback):
    """Without a progress bar (SLURM logs): one plain line per ``log_every_n_steps``
    optimizer steps, and one after each validation.

    ``step 40/300  loss 5.7080  ce 5.7070  distill 0.0010  lr 1.90e-03  1234 tok/s  0:00:12``
    """

    def __init__(self) -> None:
        self._last_step = -1
        self._started = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = max(trainer.log_every_n_steps, 1)
        if step == self._last_step or not trainer.is_global_zero:
            return  # a micro-batch inside gradient accumulation, or not rank 0
        if step % every and step != trainer.max_steps:
            return
        self._last_step = step
        metrics = trainer.progress_bar_metrics
        parts = [f"step {step}/{trainer.max_steps}", _metric_text(metrics, _SHOWN[:-1])]
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        rate = trainer.callback_metrics.get("train/tokens_per_s")
        if rate is not None:
            parts.append(f"{float(rate):.0f} tok/s")
        parts.append(_clock(time.perf_counter() - self._started))
        print("  ".join(p for p in parts if p), flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        text = "  ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
        print(f"validation at step {pl_module.log_step}: {text}", flush=True)


def console_callbacks(enable_progress_bar: bool) -> list[L.Callback]:
    """The step bar, or the plain per-step lines when the bar is off."""
    return [StepProgressBar()] if enable_progress_bar else [StepLogLine()]
