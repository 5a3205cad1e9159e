"""End to end through the real entry points: configs, CLI, fit, TensorBoard, resume."""

from __future__ import annotations

import glob
from pathlib import Path

import lightning as L
import pytest
import torch

from tide_lightning.cli import main
from tide_lightning.config import ConfigError, load_config
from tide_lightning.training.run import fit

CONF = Path(__file__).resolve().parents[2] / "conf"
FAST = ["trainer.enable_progress_bar=false"]


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.first_ids: list[list[int]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        self.first_ids.append(batch["input_ids"].tolist())


class StopAt(L.Callback):
    """Interrupt a run after ``step`` optimizer steps, as a preemption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def tensorboard_tags(run_dir: Path) -> tuple[set[str], set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = set(), set()
    for path in glob.glob(str(run_dir / "tensorboard" / "**" / "events*"), recursive=True):
        acc = EventAccumulator(path, size_guidance={"images": 0})
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    return scalars, images


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.yaml")))
def test_every_shipped_config_validates_through_the_cli(name, monkeypatch, capsys):
    for var in ("TIDE_STUDENT", "TIDE_TEACHER", "TIDE_DATA", "TIDE_RUN_DIR"):
        monkeypatch.setenv(var, "/checkpoints/placeholder")
    assert main(["print-config", "--config", str(CONF / name)]) == 0
    printed = capsys.readouterr().out
    assert "pipeline:" in printed and "objective:" in printed


def test_unknown_or_mistyped_key_fails_naming_it(capsys):
    assert (
        main(["print-config", "--config", str(CONF / "tiny.yaml"), "objective.tempreature=3"]) == 2
    )
    assert "tempreature" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(CONF / "tiny.yaml", ["trainer.max_steps=many"])
    with pytest.raises(ConfigError, match="multiple"):
        load_config(CONF / "tiny.yaml", ["data.max_length=70"])


def test_tiny_shared_fit_logs_every_term_and_keeps_teacher_out(tmp_path):
    config = load_config(CONF / "tiny.yaml", [f"run_dir={tmp_path}", "trainer.max_steps=4", *FAST])
    recorder = LossRecorder()
    run = fit(config, [recorder])
    scalars, images = tensorboard_tags(tmp_path)
    for tag in (
        "train/loss", "train/ce", "train/distill", "train/lambda_train", "train/lambda_t_mean",
        "train/mask_rate", "train/kl_to_teacher", "train/tokens_per_s", "lr-AdamW",
        "val/ce", "val/kl_to_teacher",
    ):  # fmt: skip
        assert tag in scalars, tag
    assert {"tidal/trust_heatmap", "val/kl_vs_t"} <= images
    assert len(recorder.losses) == 4 and all(torch.isfinite(torch.tensor(recorder.losses)))
    # the teacher is frozen, in eval mode, and in neither the checkpoint nor the optimizer
    holder = run.module.teacher
    assert holder.is_frozen()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(key.startswith(("student.", "val_")) for key in ckpt["state_dict"])
    teacher_params = {id(p) for p in holder.adapter.parameters()}
    optimizer = run.trainer.optimizers[0]
    assert not teacher_params & {id(p) for g in optimizer.param_groups for p in g["params"]}


def test_tiny_cross_fit_runs_chunk_losses(tmp_path):
    config = load_config(
        CONF / "tiny_cross.yaml",
        [f"run_dir={tmp_path}", "trainer.max_steps=2", "trainer.val_check_interval=2", *FAST],
    )
    recorder = LossRecorder()
    fit(config, [recorder])
    scalars, _ = tensorboard_tags(tmp_path)
    assert {"train/distill", "train/chunk_kl", "val/chunk_kl", "val/ce"} <= scalars
    assert len(recorder.losses) == 2


def test_resume_continues_the_same_loss_curve(tmp_path):
    base = [
        "trainer.max_steps=6",
        "trainer.checkpoint_every_n_steps=3",
        "trainer.val_check_interval=100",
        *FAST,
    ]
    whole = LossRecorder()
    fit(load_config(CONF / "tiny.yaml", [f"run_dir={tmp_path / 'whole'}", *base]), [whole])

    first = LossRecorder()
    cut = [f"run_dir={tmp_path / 'cut'}", *base]
    fit(load_config(CONF / "tiny.yaml", cut), [first, StopAt(3)])
    assert first.losses == pytest.approx(whole.losses[:3], rel=1e-6)
    second = LossRecorder()
    config = load_config(
        CONF / "tiny.yaml",
        [*cut, f"resume={tmp_path / 'cut' / 'checkpoints' / 'step0000003.ckpt'}"],
    )
    fit(config, [second])
    assert whole.first_ids[3:] == second.first_ids
    assert second.losses == pytest.approx(whole.losses[3:], rel=1e-5)
