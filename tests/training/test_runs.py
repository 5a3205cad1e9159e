"""A run folder is one experiment; TensorBoard keeps its history; the console is honest."""

from __future__ import annotations

import dataclasses
import glob
from pathlib import Path

import numpy as np
import pytest
import torch

from tide_lightning.config import load_config, to_yaml
from tide_lightning.errors import UserError
from tide_lightning.training.metrics import BinnedMean, bin_names
from tide_lightning.training.run import (
    check_resume,
    check_world_size,
    expand_run_dir,
    fit,
    resolved,
    validate,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
QUIET = ["trainer.enable_progress_bar=false"]


def _tiny(run_dir: Path, *overrides: str):
    return load_config(CONF / "tiny.yaml", [f"run_dir={run_dir}", *QUIET, *overrides])


def _events(run_dir: Path) -> dict[str, dict]:
    """``{events folder (relative): {"scalars": {tag: steps}, "images": {tag: steps}}}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for path in glob.glob(str(run_dir / "tensorboard" / "**" / "events*"), recursive=True):
        acc = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        folder = str(Path(path).parent.relative_to(run_dir))
        entry = out.setdefault(folder, {"scalars": {}, "images": {}})
        for tag in acc.Tags()["scalars"]:
            entry["scalars"].setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            entry["images"].setdefault(tag, []).extend(e.step for e in acc.Images(tag))
    return out


def _hparam_metric_names(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    names = set()
    for path in glob.glob(str(run_dir / "tensorboard" / "events*")):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(
                        value.metadata.plugin_data.content
                    )
                    names |= {m.name.tag for m in data.experiment.metric_infos}
    return names


# --- run_dir placeholders and resolved paths ----------------------------------------------


def test_run_dir_placeholders_expand_and_unknown_ones_fail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _tiny(Path("runs/{variant}-s{seed}"), "seed=3", "objective.variant=kl")
    assert expand_run_dir(config) == "runs/kl-s3"
    dated = dataclasses.replace(config, run_dir="runs/{variant}-{date}")
    assert expand_run_dir(dated).startswith("runs/kl-20")
    with pytest.raises(UserError, match=r"unknown placeholder\(s\) varaint"):
        expand_run_dir(dataclasses.replace(config, run_dir="runs/{varaint}"))


def test_a_dated_run_dir_resumes_its_run_from_an_earlier_day(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "runs" / "kl-2020-01-01" / "checkpoints"
    earlier.mkdir(parents=True)
    (earlier / "last.ckpt").write_bytes(b"")
    config = _tiny(Path("runs/{variant}-{date}"), "objective.variant=kl")
    assert expand_run_dir(config) == "runs/kl-2020-01-01"
    never = dataclasses.replace(config, resume="never")
    assert expand_run_dir(never) != "runs/kl-2020-01-01"
    absolute = dataclasses.replace(config, run_dir=str(tmp_path / "runs" / "{variant}-{date}"))
    assert expand_run_dir(absolute) == str(tmp_path / "runs" / "kl-2020-01-01")


def test_resolved_config_stores_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _tiny(Path("runs/x"), "student.tokenizer.source=tok_dir")
    done = resolved(config)
    assert done.run_dir == str(tmp_path / "runs" / "x")
    assert done.student.tokenizer.source == str(tmp_path / "tok_dir")
    assert Path(done.data.sources[0].path).is_absolute()
    assert resolved(_tiny(Path("r"))).student.tokenizer.source == "bpe"  # not a path


# --- resuming into a folder ---------------------------------------------------------------


def _saved_run(tmp_path: Path, *overrides: str) -> Path:
    """A run folder with a config.yaml and a (placeholder) last.ckpt, as fit leaves it."""
    config = resolved(_tiny(tmp_path / "run", *overrides))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(to_yaml(config))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    return last


def test_resume_with_another_variant_refuses_naming_keys_and_ways_out(tmp_path):
    last = _saved_run(tmp_path)
    config = resolved(_tiny(tmp_path / "run", "objective.variant=kl", "optim.lr=0.01"))
    with pytest.raises(UserError) as err:
        check_resume(config, str(last))
    message = str(err.value)
    assert "objective.variant: 'tide_shared' -> 'kl'" in message
    assert "optim.lr: 0.001 -> 0.01" in message
    assert "resume=never" in message and "another run_dir" in message


def test_resume_may_change_length_and_intervals(tmp_path):
    last = _saved_run(tmp_path)
    allowed = [
        "trainer.max_steps=50",
        "trainer.val_check_interval=7",
        "trainer.log_every_n_steps=3",
        "trainer.checkpoint_every_n_steps=9",
        "trainer.keep_last=1",
        "trainer.enable_progress_bar=true",
    ]
    check_resume(resolved(_tiny(tmp_path / "run", *allowed)), str(last))  # no error


def test_resume_on_another_world_size_says_how_to_resume_or_start_fresh(tmp_path):
    last = _saved_run(tmp_path)
    with pytest.raises(UserError) as err:
        check_resume(resolved(_tiny(tmp_path / "run", "trainer.devices=2")), str(last))
    message = str(err.value)
    assert "trained with trainer.devices=1 trainer.num_nodes=1" in message
    assert "resume with trainer.devices=1 trainer.num_nodes=1" in message
    assert "resume=never" in message


def test_launcher_world_size_must_match_the_config(tmp_path):
    config = _tiny(tmp_path)
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2"}
    with pytest.raises(UserError, match=r"started 2 processes .* pass trainer.devices=2"):
        check_world_size(config, torchrun)
    check_world_size(dataclasses.replace(config, trainer=dataclasses.replace(
        config.trainer, devices=2)), torchrun)  # fmt: skip
    with pytest.raises(UserError, match="srun started 8"):
        check_world_size(config, {"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "tide"})
    check_world_size(config, {"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "bash"})  # salloc shell
    check_world_size(config, {})  # no launcher: Lightning starts what the config asks


# --- a real run: TensorBoard, checkpoints, console ----------------------------------------


def test_fit_then_validate_keep_the_tensorboard_history(tmp_path, capsys):
    run_dir = tmp_path / "run"
    fit(_tiny(run_dir, "trainer.max_steps=4", "trainer.val_check_interval=2",
              "trainer.checkpoint_every_n_steps=1", "trainer.keep_last=2",
              "trainer.log_every_n_steps=2"))  # fmt: skip
    console = capsys.readouterr().out
    # keep-last-2 policy, plus last.ckpt
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000003.ckpt", "step0000004.ckpt"]
    # per-step lines every log_every_n_steps without a progress bar, and the summary
    assert "step 2/4  loss" in console and "step 4/4  loss" in console
    assert "step 1/4" not in console and "Epoch" not in console
    assert "done: step 4/4" in console and "tokens/s overall" in console
    assert f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}" in console

    results = validate(_tiny(run_dir), str(run_dir / "checkpoints" / "step0000003.ckpt"))
    assert set(results[0]) == {"val/ce", "val/kl_to_teacher"}
    assert all(np.isfinite(v) for v in results[0].values())
    events = _events(run_dir)
    train, checked = events["tensorboard"], events["tensorboard/validate"]
    # validation scalars and images at the steps of the checkpoints they describe
    for tag in ("val/ce", "val/kl_to_teacher"):
        assert train["scalars"][tag] == [2, 4], tag
    assert train["images"]["val/kl_vs_t"] == [2, 4]
    assert train["images"]["tidal/trust_heatmap"] == [2, 4]
    # the checkpoint's own validation: its own folder, at the checkpoint's step
    assert checked["scalars"]["val/ce"] == [3] and checked["images"]["val/kl_vs_t"] == [3]
    bins = [t for t in train["scalars"] if t.startswith("val_kl_by_t/")]
    assert bins and set(bins) <= set(bin_names(10))
    # nothing flat or fake: no epoch chart, no hp_metric, no all-zero skip counters
    assert not {"epoch", "hp_metric"} & set(train["scalars"])
    assert not [t for t in train["scalars"] if t.startswith("data/skipped_")]
    assert _hparam_metric_names(run_dir) == {"val/ce", "val/kl_to_teacher"}


def test_ce_run_has_no_distillation_charts(tmp_path):
    run_dir = tmp_path / "run"
    fit(_tiny(run_dir, "objective.variant=ce", "trainer.max_steps=2",
              "trainer.val_check_interval=2"))  # fmt: skip
    train = _events(run_dir)["tensorboard"]
    assert "train/ce" in train["scalars"] and "val/ce" in train["scalars"]
    for tag in ("train/distill", "train/lambda_train", "train/lambda_t_mean"):
        assert tag not in train["scalars"], tag
    assert "tidal/trust_heatmap" not in train["images"]
    assert _hparam_metric_names(run_dir) == {"val/ce"}


def test_binned_mean_counts_and_spread():
    metric = BinnedMean(4)
    metric.update(torch.tensor([1.0, 3.0, 2.0, 10.0]), torch.tensor([0.1, 0.2, 0.6, 0.99]))
    assert metric.counts().tolist() == [2, 0, 1, 1]
    np.testing.assert_allclose(metric.compute().numpy(), [2.0, np.nan, 2.0, 10.0])
    np.testing.assert_allclose(metric.std().numpy(), [1.0, np.nan, 0.0, 0.0])
    assert bin_names(4) == [
        "val_kl_by_t/t_0.0-0.25", "val_kl_by_t/t_0.25-0.5", "val_kl_by_t/t_0.5-0.75",
        "val_kl_by_t/t_0.75-1.0",
    ]  # fmt: skip
    assert bin_names(10)[:2] == ["val_kl_by_t/t_0.0-0.1", "val_kl_by_t/t_0.1-0.2"]


def test_an_override_without_equals_is_a_usage_error_naming_the_fix(capsys):
    from tide_lightning.cli import main

    assert main(["fit", "--config", str(CONF / "tiny.yaml"), "trainer.max_steps", "5"]) == 2
    err = capsys.readouterr().err
    assert "override 'trainer.max_steps' has no '='" in err and "trainer.max_steps=5" in err


def test_resume_never_in_a_used_folder_sets_the_old_run_aside(tmp_path):
    from tide_lightning.training.run import set_aside_previous_run

    _saved_run(tmp_path)
    (tmp_path / "run" / "tensorboard").mkdir()
    config = resolved(_tiny(tmp_path / "run", "resume=never"))
    aside = set_aside_previous_run(config)
    assert aside is not None and aside.parent == tmp_path / "run"
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "config.yaml", "tensorboard"]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert set_aside_previous_run(config) is None  # nothing left to move
    assert set_aside_previous_run(resolved(_tiny(tmp_path / "other", "resume=never"))) is None


def test_skip_counters_are_logged_only_once_non_zero(monkeypatch):
    from types import SimpleNamespace

    from tide_lightning.data import DistillDataModule
    from tide_lightning.training.callbacks import DataSkipLogger

    counts = {"malformed_json": 0, "empty": 0}
    monkeypatch.setattr(DistillDataModule, "skip_counts", lambda self, split: dict(counts))
    logged: list[dict] = []
    module = SimpleNamespace(log_dict=lambda values, **kw: logged.append(values))
    trainer = SimpleNamespace(
        datamodule=object.__new__(DistillDataModule), global_step=2, log_every_n_steps=1
    )
    DataSkipLogger().on_train_batch_end(trainer, module, None, None, 0)
    assert logged == []  # a clean corpus adds no charts
    counts["malformed_json"] = 2
    DataSkipLogger().on_train_batch_end(trainer, module, None, None, 0)
    assert logged == [{"data/skipped_malformed_json": 2.0}]


def test_kl_history_is_restored_only_for_the_same_quantity_and_teacher():
    from types import SimpleNamespace

    from tide_lightning.training.module import DistillationModule

    saved = {"global_step": 300, "kl_history": {"curve": "chunk KL to T", "points": [[150, [1.0]]]}}
    same = SimpleNamespace(_curve_label="chunk KL to T", kl_history=[])
    DistillationModule.on_load_checkpoint(same, saved)
    assert same.kl_history == [(150, [1.0])] and same._loaded_step == 300
    other = SimpleNamespace(_curve_label="token KL to U", kl_history=[])
    DistillationModule.on_load_checkpoint(other, saved)
    assert other.kl_history == []
