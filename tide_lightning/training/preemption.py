"""Checkpoint and requeue when SLURM warns that the job is about to end.

``sbatch --signal=SIGUSR1@120`` (without ``B:``) sends SIGUSR1 to every task about two
minutes before the time limit. Lightning's own answer (``SLURMEnvironment(auto_requeue=
True)``) saves the checkpoint *inside* the signal handler. A Python signal handler runs
between two bytecodes of the main thread, possibly in the middle of a collective (DDP's
gradient all-reduce, a ZeRO-3 gather of the sharded teacher, the data module's
all-gather); a checkpoint is collective too, and the ranks receive the signal at
different moments, so ranks end up waiting in different collectives and the job hangs
until SLURM kills it, without a checkpoint.

Here the handler only sets a flag. At the next optimizer-step boundary
(``on_train_batch_end``) the ranks agree whether *any* of them was signalled (one tiny
all-reduce per step), so all stop at the same step; all of them save the checkpoint
(collective), rank 0 runs ``scontrol requeue <job id>``, and training stops cleanly. The
relaunched job resumes from the checkpoint (``resume: auto`` reads
``run_dir/checkpoints/last.ckpt``), and the data module's saved position gives it the
same next batch.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

_JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")


def slurm_job_id(environ: Mapping[str, str]) -> str | None:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task.

    Args:
        environ: process environment (``os.environ``).

    Returns:
        The job id, or None outside a SLURM job (or for an id that is not numeric).
    """
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task else environ.get("SLURM_JOB_ID")
    if job_id is None or not _JOB_ID.fullmatch(job_id):
        return None
    return job_id


def requeue_slurm_job(job_id: str, timeout_s: float = 60.0) -> bool:
    """Run ``scontrol requeue job_id``; True when it succeeded.

    SLURM then ends this job (SIGTERM, then SIGKILL) and puts it back in the queue with
    the same job id, so the same batch script runs again with the same run directory.
    """
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        rank_zero_warn(f"scontrol requeue {job_id} failed: {err}")
        return False
    if result.returncode != 0:
        rank_zero_warn(
            f"scontrol requeue {job_id} exited with {result.returncode}: {result.stderr.strip()}"
        )
        return False
    return True


class PreemptionCheckpoint(Callback):
    """On ``signum``: checkpoint to ``path`` at the next step boundary, requeue, stop.

    Args:
        path: checkpoint file every rank saves (rank 0 writes it); the relaunch resumes
            from it, so use the file ``resume: auto`` reads.
        signum: the warning signal (``--signal=SIGUSR1@...`` in the batch script).
        requeue: run ``scontrol requeue`` on rank 0 when inside a SLURM job. Outside
            SLURM (or with False) the run only checkpoints and stops, e.g. after
            ``kill -USR1 <pid>`` on a workstation.
    """

    def __init__(
        self, path: str | Path, signum: int = signal.SIGUSR1, requeue: bool = True
    ) -> None:
        self.path = Path(path)
        self.signum = signal.Signals(signum)
        self.requeue = requeue
        self._requested = False
        self._previous_handler = None
        self._installed = False
        self._step_at_batch_start = -1
        self.stopped_at_step: int | None = None  # global step of the preemption checkpoint
        self.requeued = False

    @property
    def requested(self) -> bool:
        """Whether this process received the signal (and has not acted on it yet)."""
        return self._requested

    def request(self) -> None:
        """What the signal handler does: only raise the flag (safe at any bytecode)."""
        self._requested = True

    def _handle(self, signum: int, frame) -> None:
        self.request()

    # -- Lightning hooks --------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Installed before the dataloaders exist, so forked workers inherit this handler
        # instead of SIGUSR1's default action (terminate) when SLURM signals them too.
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._previous_handler = signal.signal(self.signum, self._handle)
        self._installed = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous_handler or signal.SIG_DFL)
            self._installed = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if self.stopped_at_step is not None:
            return
        if trainer.global_step == self._step_at_batch_start:
            return  # mid gradient accumulation: not a step boundary
        # Every rank reaches this point at every step, so the all-reduce cannot hang and
        # all ranks take the same decision at the same step.
        if not trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            return
        self._requested = False
        self.stopped_at_step = trainer.global_step
        rank_zero_info(
            f"Preemption signal: saving {self.path} at step {trainer.global_step} and stopping"
        )
        trainer.save_checkpoint(self.path)  # collective; returns after a barrier
        job_id = slurm_job_id(os.environ) if self.requeue else None
        if trainer.is_global_zero and job_id is not None:
            self.requeued = requeue_slurm_job(job_id)
            if self.requeued:
                rank_zero_info(f"Requeued SLURM job {job_id}")
        trainer.should_stop = True
        # Stopping early would otherwise start a validation pass: do not spend the
        # remaining grace time on it.
        trainer.limit_val_batches = 0
