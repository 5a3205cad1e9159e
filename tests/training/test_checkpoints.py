"""Checkpoints that survive faults: atomic writes under kill -9, and a resume that passes
over a broken checkpoint (reported by path) to the newest intact one, then continues
bit-identically."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tide_lightning.cli import main
from tide_lightning.errors import UserError
from tide_lightning.training.checkpoints import (
    atomic_save,
    checkpoint_problem,
    resume_checkpoint,
    temporary_path,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def _ckpt(step: int) -> dict:
    return {"state_dict": {"w": torch.full((256,), float(step))}, "global_step": step}


def _write_run(run_dir: Path, steps: list[int], last: int) -> Path:
    checkpoints = run_dir / "checkpoints"
    for step in steps:
        atomic_save(_ckpt(step), checkpoints / f"step{step:07d}.ckpt")
    atomic_save(_ckpt(last), checkpoints / "last.ckpt")
    return checkpoints


def _step_of(path: str) -> int:
    return torch.load(path, weights_only=True)["global_step"]


def test_atomic_save_loads_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    atomic_save(_ckpt(3), path)
    atomic_save(_ckpt(4), path)  # overwrites in place
    assert _step_of(str(path)) == 4 and checkpoint_problem(path) is None
    assert not temporary_path(path).exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


_KILLED_SAVE = """
import sys, time, torch
from pathlib import Path

path, marker, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

class Stall:  # pickled in the middle of the save: the parent kills us here
    def __reduce__(self):
        marker.write_text("saving")
        time.sleep(120)
        return (int, ())

big = {"state_dict": {"w": torch.ones(1 << 20)}, "global_step": 2, "stall": Stall(),
       "more": torch.ones(1 << 20)}
if mode == "atomic":
    from tide_lightning.training.checkpoints import atomic_save

    atomic_save(big, path)
else:
    torch.save(big, path)  # in place, as a plain writer would
"""


def _kill_during_save(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / mode / "checkpoints" / "last.ckpt"
    atomic_save(_ckpt(1), path)  # the previous, intact checkpoint
    marker = tmp_path / f"{mode}.saving"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(path), str(marker), mode])
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the save never started"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    return path


@pytest.mark.timeout(240)
def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    path = _kill_during_save(tmp_path, "atomic")
    assert checkpoint_problem(path) is None and _step_of(str(path)) == 1
    assert temporary_path(path).exists()  # the torn write stayed in the temporary file
    # The next resume takes the intact file and clears the leftover.
    assert resume_checkpoint("auto", tmp_path / "atomic") == str(path)
    assert list(path.parent.iterdir()) == [path]
    # What a plain in-place writer leaves after the same kill: a torn last.ckpt.
    torn = _kill_during_save(tmp_path, "plain")
    assert checkpoint_problem(torn) is not None


def test_truncated_last_is_reported_and_the_newest_intact_one_used(tmp_path, caplog):
    checkpoints = _write_run(tmp_path, [3, 6], last=7)
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as a full disk leaves it
    with caplog.at_level(logging.WARNING):
        chosen = resume_checkpoint("auto", tmp_path)
    assert chosen == str(checkpoints / "step0000006.ckpt")
    assert f"checkpoint {last} cannot be loaded" in caplog.text
    # A flipped byte inside a tensor fails its CRC: passed over the same way.
    data = bytearray((checkpoints / "step0000006.ckpt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (checkpoints / "step0000006.ckpt").write_bytes(bytes(data))
    assert resume_checkpoint("auto", tmp_path) == str(checkpoints / "step0000003.ckpt")


def test_every_checkpoint_broken_or_a_broken_explicit_path_is_a_user_error(tmp_path):
    checkpoints = _write_run(tmp_path, [3], last=3)
    for p in checkpoints.glob("*.ckpt"):
        p.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"no intact checkpoint in .*step0000003\.ckpt"):
        resume_checkpoint("auto", tmp_path)
    with pytest.raises(UserError, match=r"last\.ckpt cannot be loaded"):
        resume_checkpoint(str(checkpoints / "last.ckpt"), tmp_path)
    with pytest.raises(UserError, match=r"nope\.ckpt: no such file"):
        resume_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)
    assert resume_checkpoint("never", tmp_path) is None
    assert resume_checkpoint("auto", tmp_path / "fresh") is None


def test_fit_with_a_truncated_last_ckpt_resumes_bit_identically(tmp_path, capsys):
    from tide_lightning.config import load_config
    from tide_lightning.training.run import fit

    base = [
        "trainer.max_steps=6",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.val_check_interval=100",
        "trainer.enable_progress_bar=false",
    ]
    whole = fit(load_config(CONF / "tiny.yaml", [f"run_dir={tmp_path / 'whole'}", *base]))
    cut = [f"run_dir={tmp_path / 'cut'}", *base]
    # An interrupted run: its step-4 checkpoint is intact, its last.ckpt (step 6) torn.
    fit(load_config(CONF / "tiny.yaml", cut))
    checkpoints = tmp_path / "cut" / "checkpoints"
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (checkpoints / "step0000006.ckpt").unlink()
    resumed = fit(load_config(CONF / "tiny.yaml", cut))
    assert resumed.trainer.global_step == 6
    for name, value in whole.module.student.state_dict().items():
        assert torch.equal(value, resumed.module.student.state_dict()[name]), name
    # The same through the CLI: the torn file is named, the run goes on (exit 0).
    last.write_bytes(b"torn")
    assert main(["fit", "--config", str(CONF / "tiny.yaml"), *cut]) == 0
