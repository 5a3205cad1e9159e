"""Preemption under simulated SLURM: signal -> checkpoint -> requeue -> exact resume.

Two processes play the two tasks ``srun`` would start (``SLURM_PROCID`` 0 and 1, gloo on
CPU) and a stand-in ``scontrol`` on ``PATH`` records its arguments. Each run goes
through the real ``fit`` (``builders.build_trainer`` wires in ``PreemptionCheckpoint``
and ``SLURMEnvironment(auto_requeue=False)``); a recording callback writes every batch
and loss each rank trains on.

1. An uninterrupted 6-step run is the reference.
2. The same run, where only rank 1 sends itself SIGUSR1 during step 3: both ranks must
   stop after step 3 (they agree at the step boundary), ``last.ckpt`` holds step 3 and
   ``scontrol requeue <job id>`` ran exactly once.
3. The relaunch (same environment, same run dir, ``resume: auto``) must train steps 4-6
   on exactly the reference's batches, with the reference's losses.

Single-process tests cover the pieces: job ids, the ``scontrol`` call and its failures,
the handler's install/restore, and waiting for the optimizer step under accumulation.

This file is also the per-rank driver: ``python tests/test_preemption.py CONFIG KEY=VALUE...``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tide_lightning.config import load_config
from tide_lightning.training.preemption import PreemptionCheckpoint, requeue_slurm_job, slurm_job_id

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
SIGNAL_STEP = 3
JOB_ID = "4242"


class BatchRecorder(L.Callback):
    """Appends ``{step, rows, loss}`` per trained batch to ``out_dir/rank<r>.jsonl``;
    optionally sends this process ``signal_at = (step, rank)``'s SIGUSR1 mid-step."""

    def __init__(self, out_dir: str, signal_at: tuple[int, int] | None) -> None:
        self.out_dir = Path(out_dir)
        self.signal_at = signal_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step + 1
        if self.signal_at == (step, trainer.global_rank):
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = {
            "step": trainer.global_step,
            "rows": batch["input_ids"].tolist(),
            "loss": float(outputs["loss"]),
        }
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


class _Tiny(L.LightningModule):
    """One linear layer on a fixed random stream; enough to drive the step loop."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["input_ids"]).pow(2).mean()

    def train_dataloader(self):
        rows = [{"input_ids": x} for x in torch.randn(64, 4)]
        return torch.utils.data.DataLoader(rows, batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _tiny_fit(tmp_path: Path, signal_at: tuple[int, int], accumulate: int = 1):
    preemption = PreemptionCheckpoint(tmp_path / "last.ckpt")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        accumulate_grad_batches=accumulate,
        callbacks=[preemption, BatchRecorder(str(tmp_path), signal_at)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Tiny())
    return trainer, preemption


def test_slurm_job_id_plain_array_and_absent() -> None:
    assert slurm_job_id({"SLURM_JOB_ID": "123"}) == "123"
    array = {"SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "123", "SLURM_ARRAY_TASK_ID": "7"}
    assert slurm_job_id(array) == "123_7"
    assert slurm_job_id({}) is None
    assert slurm_job_id({"SLURM_JOB_ID": "1; rm -rf /"}) is None


def test_requeue_runs_scontrol_and_reports_failure(tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "scontrol.log"
    _fake_scontrol(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert requeue_slurm_job("123_7")
    assert log.read_text() == "requeue 123_7\n"
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/sh\necho 'Invalid job id' >&2\nexit 1\n")
    with pytest.warns(UserWarning, match="Invalid job id"):
        assert not requeue_slurm_job("123")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.warns(UserWarning, match="requeue 123 failed"):
        assert not requeue_slurm_job("123")


def test_handler_only_sets_a_flag_and_is_restored(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    trainer, preemption = _tiny_fit(tmp_path, signal_at=(3, 0))
    assert preemption.stopped_at_step == 3 and trainer.global_step == 3
    assert not preemption.requested and not preemption.requeued  # no SLURM job here
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 3
    assert signal.getsignal(signal.SIGUSR1) is before


def test_waits_for_the_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    # Signalled during the first micro-batch of step 2: the checkpoint must not be taken
    # with half-accumulated gradients, but after that step's second micro-batch.
    trainer, preemption = _tiny_fit(tmp_path, signal_at=(2, 0), accumulate=2)
    assert preemption.stopped_at_step == 2
    steps = [r["step"] for r in _records(tmp_path, 0)]
    assert steps == [0, 1, 1, 2]


def test_no_signal_no_checkpoint(tmp_path: Path) -> None:
    trainer, preemption = _tiny_fit(tmp_path, signal_at=(99, 0))
    assert trainer.global_step == 6 and preemption.stopped_at_step is None
    assert not (tmp_path / "last.ckpt").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_scontrol(bin_dir: Path, log: Path, snapshot: tuple[Path, Path] | None = None) -> None:
    """``scontrol`` that appends its arguments to ``log`` and, with ``snapshot = (src,
    dst)``, copies the checkpoint ``src`` as it is on disk at the moment of the call."""
    bin_dir.mkdir()
    lines = ["#!/bin/sh", f'echo "$@" >> "{log}"']
    if snapshot is not None:
        lines.append(f'[ -f "{snapshot[0]}" ] && cp "{snapshot[0]}" "{snapshot[1]}"')
    script = bin_dir / "scontrol"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)


def _slurm_env(rank: int, port: int, bin_dir: Path, record: Path, signal_at: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for key in ("NODE_RANK", "WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env.update(
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="tide-test",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_NODEID="0",
        SLURM_NODELIST="127.0.0.1",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TIDE_TEST_RECORD=str(record),
        TIDE_TEST_SIGNAL_AT=signal_at,
    )
    return env


def _launch(tmp: Path, run_dir: Path, record: Path, signal_at: str = "") -> None:
    """Both "srun tasks" of one job (attempt); fails the test unless both exit 0."""
    record.mkdir()
    overrides = [
        f"run_dir={run_dir}",
        f"trainer.max_steps={STEPS}",
        "trainer.devices=2",
        "trainer.checkpoint_every_n_steps=1000",
        "trainer.enable_progress_bar=false",
        "data.val_sources=[]",
    ]
    cmd = [sys.executable, __file__, str(ROOT / "conf" / "tiny.yaml"), *overrides]
    port = _free_port()
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_slurm_env(rank, port, tmp / "bin", record, signal_at),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=150)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{out[-4000:]}"


def _records(record: Path, rank: int) -> list[dict]:
    lines = (record / f"rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.timeout(400)
def test_signal_checkpoints_requeues_and_resumes_exactly(tmp_path: Path) -> None:
    requeue_log = tmp_path / "scontrol.log"
    run_dir = tmp_path / "preempted"
    last, at_requeue = run_dir / "checkpoints" / "last.ckpt", tmp_path / "at_requeue.ckpt"
    _fake_scontrol(tmp_path / "bin", requeue_log, snapshot=(last, at_requeue))

    _launch(tmp_path, tmp_path / "reference", tmp_path / "rec_reference")
    assert not requeue_log.exists()  # no signal, no requeue

    _launch(tmp_path, run_dir, tmp_path / "rec_first", signal_at=f"{SIGNAL_STEP}:1")
    assert requeue_log.read_text().split("\n") == [f"requeue {JOB_ID}", ""]
    # SLURM may kill the job right after the requeue: the relaunch must do with the
    # checkpoint that was complete on disk when scontrol ran.
    ckpt = torch.load(at_requeue, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == SIGNAL_STEP
    shutil.copyfile(at_requeue, last)

    _launch(tmp_path, run_dir, tmp_path / "rec_relaunch")
    assert requeue_log.read_text().count("requeue") == 1

    for rank in (0, 1):
        reference = _records(tmp_path / "rec_reference", rank)
        first = _records(tmp_path / "rec_first", rank)
        relaunch = _records(tmp_path / "rec_relaunch", rank)
        assert [r["step"] for r in reference] == list(range(1, STEPS + 1))
        # Rank 0 never saw the signal and still stopped at the same step as rank 1.
        assert [r["step"] for r in first] == list(range(1, SIGNAL_STEP + 1))
        assert [r["step"] for r in relaunch] == list(range(SIGNAL_STEP + 1, STEPS + 1))
        for got, want in zip(first + relaunch, reference, strict=True):
            assert got["rows"] == want["rows"], f"rank {rank} step {got['step']}: other batch"
            assert math.isclose(got["loss"], want["loss"], rel_tol=1e-4, abs_tol=1e-6)
    other = _records(tmp_path / "rec_reference", 1)
    assert _records(tmp_path / "rec_reference", 0)[0]["rows"] != other[0]["rows"]


def _main(argv: list[str]) -> None:
    from tide_lightning.training.run import fit

    at = os.environ.get("TIDE_TEST_SIGNAL_AT", "")
    signal_at = tuple(int(v) for v in at.split(":")) if at else None
    recorder = BatchRecorder(os.environ["TIDE_TEST_RECORD"], signal_at)
    fit(load_config(argv[0], argv[1:]), callbacks=[recorder])


if __name__ == "__main__":
    _main(sys.argv[1:])
