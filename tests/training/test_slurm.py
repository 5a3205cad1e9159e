"""slurm/distill.sh under stub ``srun``/``scontrol``: both task layouts, its log, its errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tide_lightning.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "slurm" / "distill.sh"


def _stubs(tmp_path: Path) -> tuple[Path, Path]:
    """``srun`` that records its arguments (and TIDE_RUN_DIR), ``scontrol`` that records."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "srun.log"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > "{calls}"\necho "TIDE_RUN_DIR=$TIDE_RUN_DIR" '
        f'>> "{calls}"\necho "srun ran"\n'
    )
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "scontrol.log"}"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir, calls


def _submit_dir(tmp_path: Path) -> Path:
    submit = tmp_path / "submit"
    (submit / "conf").mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "tiny.yaml", submit / "conf" / "tiny.yaml")
    return submit


def _env(tmp_path: Path, bin_dir: Path, **slurm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TIDE_"))}
    env.pop("RUN_DIR", None)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_SUBMIT_DIR=str(tmp_path), **slurm)
    return env


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "layout",
    [
        {"SLURM_NTASKS_PER_NODE": "4", "SLURM_NTASKS": "8"},  # --ntasks-per-node=4
        {"SLURM_NTASKS": "8"},  # --ntasks=8 only
        {"SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_NTASKS": "8"},  # the repeated form
    ],
    ids=["ntasks-per-node", "ntasks", "ntasks-per-node-repeated"],
)
def test_both_task_layouts_give_the_same_fit_command(tmp_path, layout):
    bin_dir, calls = _stubs(tmp_path)
    submit = _submit_dir(tmp_path)
    env = _env(submit, bin_dir, SLURM_JOB_ID="77", SLURM_NNODES="2", **layout)
    runs = []
    for restart in ("0", "1"):  # a requeued job keeps its id: same run dir, same log
        env["SLURM_RESTART_COUNT"] = restart
        done = _run(env, "conf/tiny.yaml", "trainer.max_steps=2")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "log: logs/tide-distill-77.out"
        runs.append(calls.read_text().splitlines())
    assert runs[0] == runs[1]
    args = runs[0]
    cli = args.index("fit")
    assert args[:cli] == ["--kill-on-bad-exit=1", "python", "-m", "tide_lightning"]
    assert args[cli + 1 : cli + 3] == ["--config", "conf/tiny.yaml"]
    overrides = args[cli + 3 : -1]
    assert "run_dir=runs/tiny-77" in overrides and "resume=auto" in overrides
    assert "trainer.num_nodes=2" in overrides and "trainer.devices=4" in overrides
    assert overrides[-1] == "trainer.max_steps=2"
    assert args[-1] == "TIDE_RUN_DIR=runs/tiny-77"  # the variable the configs read
    config = load_config(ROOT / "conf" / "tiny.yaml", overrides)  # every key exists
    assert (config.trainer.num_nodes, config.trainer.devices) == (2, 4)
    # the script made its log folder; both restarts appended to the one log
    log = (submit / "logs" / "tide-distill-77.out").read_text()
    assert log.count("srun ran") == 2 and "restart 1: conf/tiny.yaml -> runs/tiny-77" in log


def test_tide_run_dir_from_the_environment_is_used(tmp_path):
    bin_dir, calls = _stubs(tmp_path)
    submit = _submit_dir(tmp_path)
    env = _env(submit, bin_dir, SLURM_JOB_ID="5", SLURM_NTASKS="1", TIDE_RUN_DIR="runs/mine")
    assert _run(env, "conf/tiny.yaml").returncode == 0
    assert "run_dir=runs/mine" in calls.read_text().splitlines()


@pytest.mark.parametrize(
    ("slurm", "args", "message"),
    [
        ({}, ["conf/tiny.yaml"], "not inside a SLURM job; submit it: usage: sbatch"),
        ({"SLURM_JOB_ID": "1"}, [], "usage: sbatch slurm/distill.sh CONFIG.yaml"),
        ({"SLURM_JOB_ID": "1"}, ["conf/nope.yaml"], "config file conf/nope.yaml not found"),
        (
            {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "3", "SLURM_NNODES": "2"},
            ["conf/tiny.yaml"],
            "--ntasks=3 does not split evenly over 2 nodes",
        ),
        (
            {"SLURM_JOB_ID": "1", "RUN_DIR": "runs/old"},
            ["conf/tiny.yaml"],
            "set TIDE_RUN_DIR=runs/old",
        ),
    ],
    ids=["outside-slurm", "no-config", "missing-config", "uneven-ntasks", "old-RUN_DIR"],
)
def test_mistakes_end_in_one_line(tmp_path, slurm, args, message):
    bin_dir, calls = _stubs(tmp_path)
    done = _run(_env(_submit_dir(tmp_path), bin_dir, **slurm), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not calls.exists()
