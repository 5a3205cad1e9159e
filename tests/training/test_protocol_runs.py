"""Published-protocol runs: steps counted from trainer.epochs; a composite logs each term."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tide_lightning.config import ConfigError, load_config
from tide_lightning.data.mixing import optimizer_steps
from tide_lightning.training.builders import build_run

CONF = Path(__file__).resolve().parents[2] / "conf"


def _chats(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            reply = f"def f{i}(x):\n    return x + {i}  # python" if i % 2 else f"plain answer {i}"
            messages = [{"role": "user", "content": f"question {i}"},
                        {"role": "assistant", "content": reply}]  # fmt: skip
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _overrides(tmp_path: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={tmp_path / 'run'}",
        "trainer.enable_progress_bar=false",
        f"data.sources=[{{kind: jsonl, path: '{corpus}'}}, "
        f"{{kind: jsonl, path: '{corpus}', assistant_contains: python}}]",
        "data.val_sources=[]",
        "data.heldout_fraction=0.1",
        "data.mixing=concat",
        "trainer.max_steps=null",
        *extra,
    ]


def test_epochs_set_the_steps_from_the_filtered_and_carved_records(tmp_path):
    corpus = _chats(tmp_path / "chat.jsonl", 40)
    config = load_config(CONF / "tiny.yaml", _overrides(tmp_path, corpus, "trainer.epochs=2"))
    run = build_run(config)
    # 40 records + 20 python ones; 10% held out of each: 36 + 18 = 54 training records.
    train, held = run.datamodule.prepared_sources()
    assert [len(s) for s in train] == [36, 18] and [len(s) for s in held] == [4, 2]
    steps = optimizer_steps(54, 2, config.data.batch_size, 1)
    assert steps == 28  # ceil(54 / 4) = 14 batches per epoch, two epochs
    assert run.trainer.max_steps == steps
    assert run.module.total_steps == steps


def test_fit_by_epochs_ends_on_the_counted_step_with_full_progress(tmp_path):
    corpus = _chats(tmp_path / "chat.jsonl", 12)
    extra = ("trainer.epochs=0.5", "data.batch_size=2", "trainer.val_check_interval=100")
    config = load_config(CONF / "tiny.yaml", _overrides(tmp_path, corpus, *extra))
    run = build_run(config)
    # 12 + 6 records, 10% (rounded up) held out: 10 + 5 = 15; ceil(15 / 2) = 8 -> 4 steps.
    assert run.trainer.max_steps == 4
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.global_step == 4 and run.module.progress == pytest.approx(1.0)


def test_epochs_and_max_steps_together_are_refused():
    with pytest.raises(ConfigError, match="exactly one of trainer.max_steps and trainer.epochs"):
        load_config(CONF / "tiny.yaml", ["trainer.epochs=2"])
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(CONF / "tiny.yaml", ["trainer.max_steps=null"])


def test_a_composite_run_logs_each_term(tmp_path):
    overrides = [
        f"run_dir={tmp_path}", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
        "objective.variant=tide_shared+kl", "trainer.val_check_interval=100",
    ]  # fmt: skip
    run = build_run(load_config(CONF / "tiny.yaml", overrides))
    run.trainer.fit(run.module, datamodule=run.datamodule)
    logged = run.trainer.logged_metrics
    total = logged["train/distill_tide_shared"] + logged["train/distill_kl"]
    assert float(total) == pytest.approx(float(logged["train/distill"]), rel=1e-5)
