"""Fault injection (slow, ``make test-all``): runs interrupted the hard ways end with the
same student weights as an uninterrupted run, bit for bit.

Every run is the real ``fit`` on ``conf/tiny.yaml`` in fresh processes (this file is the
per-rank driver), relaunched with ``resume: auto`` after each fault until it completes:

- ``kill -9`` at three random steps (mid-step: after the backward pass, before the
  optimizer step), with one process and with two (gloo, both ranks killed at once, as a
  node failure does); each relaunch resumes from the newest intact checkpoint, an older
  one than the kill, and replays the lost steps;
- SIGUSR1 during a validation pass: the preemption callback checkpoints at the next step
  boundary and stops; the relaunch continues;
- SIGTERM in the middle of a checkpoint save: the save completes (atomically), Lightning
  stops at the next step, the relaunch continues from that checkpoint.

The kill steps are drawn from ``random.Random(TIDE_FAULT_SEED)`` (default 0) and printed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


class Fault(L.Callback):
    """Injects one fault (``kind:step``) and saves the final student weights (rank 0)."""

    def __init__(self, spec: str, final: str) -> None:
        kind, _, step = spec.partition(":")
        self.kind, self.step, self.final = kind, int(step or 0), final

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.kind == "kill9" and trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if self.kind == "usr1_val" and trainer.global_step == self.step and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGUSR1)

    def setup(self, trainer, pl_module, stage) -> None:
        if self.kind != "term_save":
            return
        import tide_lightning.training.checkpoints as checkpoints

        save, at = checkpoints.atomic_save, self.step

        def save_with_sigterm(obj, path):
            if obj.get("global_step") == at:
                os.kill(os.getpid(), signal.SIGTERM)  # handled while torch.save writes
            save(obj, path)

        checkpoints.atomic_save = save_with_sigterm

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step == STEPS:
            torch.save(
                {k: v.clone() for k, v in pl_module.student.state_dict().items()}, self.final
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int | None, port: int, fault: str, final: Path) -> dict:
    launcher = ("SLURM_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_", "TORCH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(TIDE_FAULT=fault, TIDE_FINAL=str(final))
    if rank is not None:  # the two tasks srun would start (no scontrol: nothing requeues)
        env.update(
            SLURM_JOB_ID="77", SLURM_JOB_NAME="faults", SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_NODEID="0",
            SLURM_NODELIST="127.0.0.1", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
    return env


def _launch(run_dir: Path, procs: int, fault: str = "", expect: int | None = 0) -> None:
    """One attempt (one process, or both ranks); fails unless each exits with ``expect``
    (None: any status)."""
    overrides = [
        f"run_dir={run_dir}",
        f"trainer.max_steps={STEPS}",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.val_check_interval=3",
        "trainer.keep_last=-1",
        "trainer.enable_progress_bar=false",
    ]
    if procs == 2:
        overrides += ["trainer.devices=2", "data.val_sources=[]"]
    cmd = [sys.executable, __file__, str(ROOT / "conf" / "tiny.yaml"), *overrides]
    port = _free_port()
    final = run_dir / "final.pt"
    ranks = [None] if procs == 1 else [0, 1]
    running = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=_env(r, port, fault, final),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in ranks
    ]
    try:
        for p in running:
            out = p.communicate(timeout=400)[0]
            if expect is not None and p.returncode != expect:
                pytest.fail(f"{fault or 'no fault'}: exit {p.returncode}:\n{out[-4000:]}")
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final.pt", weights_only=True)


def _assert_bitwise_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), f"{name} differs from the uninterrupted run"


def _kill_steps() -> list[int]:
    seed = int(os.environ.get("TIDE_FAULT_SEED", "0"))
    steps = sorted(random.Random(seed).sample(range(2, STEPS), 3))
    print(f"kill -9 at steps {steps} (TIDE_FAULT_SEED={seed})")
    return steps


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    """Uninterrupted runs' final weights, per process count (computed on first use)."""
    root, cache = tmp_path_factory.mktemp("reference"), {}

    def get(procs: int) -> dict:
        if procs not in cache:
            _launch(root / f"p{procs}", procs)
            cache[procs] = _final(root / f"p{procs}")
        return cache[procs]

    return get


@pytest.mark.parametrize("procs", [1, 2])
def test_kill_9_at_three_random_steps(tmp_path, reference, procs):
    run_dir = tmp_path / "run"
    for step in _kill_steps():
        _launch(run_dir, procs, f"kill9:{step}", expect=-signal.SIGKILL)
        assert not (run_dir / "final.pt").exists()
    _launch(run_dir, procs)
    _assert_bitwise_equal(_final(run_dir), reference(procs))


def test_sigusr1_during_validation(tmp_path, reference):
    run_dir = tmp_path / "run"
    _launch(run_dir, 1, "usr1_val:3")  # validation runs after step 3 (val_check_interval)
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert stopped["global_step"] == 4  # checkpointed at the next step boundary, stopped
    _launch(run_dir, 1)
    _assert_bitwise_equal(_final(run_dir), reference(1))


def test_sigterm_during_a_checkpoint_save(tmp_path, reference):
    run_dir = tmp_path / "run"
    _launch(run_dir, 1, "term_save:4", expect=None)
    stopped = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert stopped["global_step"] == 4 and not (run_dir / "final.pt").exists()
    _launch(run_dir, 1)
    _assert_bitwise_equal(_final(run_dir), reference(1))


def _main(argv: list[str]) -> None:
    from tide_lightning.config import load_config
    from tide_lightning.training.run import fit

    fault = Fault(os.environ.get("TIDE_FAULT", ""), os.environ["TIDE_FINAL"])
    fit(load_config(argv[0], argv[1:]), callbacks=[fault])


if __name__ == "__main__":
    _main(sys.argv[1:])
