"""Two-process CPU runs (gloo) of the real CLI on one machine, the two documented ways.

- ``python -m tide_lightning fit ... trainer.devices=2``: Lightning starts rank 1 itself
  (its subprocess launcher re-runs the same command with ``LOCAL_RANK=1``).
- ``fabric run --devices=2 $(which tide) fit ... trainer.devices=2``: Lightning's
  launcher (torchrun underneath) starts both ranks; the Trainer finds the torchelastic
  environment and spawns nothing.

Each run must exit 0 and leave a checkpoint whose data position has one row per rank,
each rank having consumed its own ``max_steps`` batches; the teacher is ZeRO-3 sharded
over the two ranks (``teacher.sharding: auto``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = 2
pytestmark = pytest.mark.timeout(300)


def _clean_env() -> dict:
    """This process's environment without anything that would look like a launcher's."""
    launcher = (
        "SLURM_",
        "LOCAL_RANK",
        "NODE_RANK",
        "WORLD_SIZE",
        "RANK",
        "MASTER_",
        "TORCHELASTIC",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _fit_args(run_dir: Path) -> list[str]:
    return [
        "fit",
        "--config",
        str(ROOT / "conf" / "tiny.yaml"),
        f"run_dir={run_dir}",
        "trainer.devices=2",
        f"trainer.max_steps={STEPS}",
        "trainer.enable_progress_bar=false",
        "data.val_sources=[]",
    ]


def _run(cmd: list[str], extensions: Path | None = None) -> None:
    env = _clean_env()
    if extensions is not None:  # where DeepSpeed would JIT-build an op (none must be built)
        env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def _assert_two_ranks_trained(run_dir: Path) -> None:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    rows = ckpt["DistillDataModule"]["rows"]
    assert len(rows) == 2  # the data position of each of the two ranks
    assert [row[0] for row in rows] == [STEPS, STEPS]  # batches consumed per rank


def test_trainer_devices_2_spawns_the_second_rank(tmp_path: Path) -> None:
    extensions = tmp_path / "torch_extensions"
    _run([sys.executable, "-m", "tide_lightning", *_fit_args(tmp_path / "run")], extensions)
    _assert_two_ranks_trained(tmp_path / "run")
    # DeepSpeed's CPU shared-memory op comes built with the package (make install), so the
    # run compiled nothing and took no lock under the torch extensions cache.
    assert not extensions.exists() or not any(extensions.rglob("*")), list(extensions.rglob("*"))


def test_fabric_run_without_matching_devices_stops_with_a_message(tmp_path: Path) -> None:
    from tide_lightning.config import load_config
    from tide_lightning.errors import UserError
    from tide_lightning.training.run import check_world_size

    config = load_config(ROOT / "conf" / "tiny.yaml", [f"run_dir={tmp_path}"])
    env = {"TORCHELASTIC_RUN_ID": "1", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.raises(UserError, match="torchrun/fabric run started 2 processes"):
        check_world_size(config, env)


@pytest.mark.slow
def test_fabric_run_launches_both_ranks(tmp_path: Path) -> None:
    fabric, tide = BIN / "fabric", BIN / "tide"
    if not (fabric.is_file() and tide.is_file()):
        pytest.skip("the fabric and tide console scripts are not installed in this environment")
    launch = [str(fabric), "run", "--accelerator=cpu", "--devices=2", str(tide)]
    _run([*launch, *_fit_args(tmp_path / "run")])
    _assert_two_ranks_trained(tmp_path / "run")
