"""The aligned teacher view through the real config and builders: keys, checks, batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tide_lightning.config import ConfigError, load_config
from tide_lightning.training.builders import build_run

CONF = Path(__file__).resolve().parents[2] / "conf"


def _chats(path: Path) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
                {"role": "user", "content": "Explain."},
                {"role": "assistant", "content": f"Adding {i} to itself doubles it."},
            ]
        }
        for i in range(12)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_aligned_view_config_to_batches(tmp_path):
    chats = _chats(tmp_path / "chat.jsonl")
    config = load_config(
        CONF / "tiny.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.sources=[{{kind: jsonl, path: {chats}}}]",
            "data.val_sources=[]",
            "data.teacher_view=aligned",
            "data.teacher_max_length=96",
            "trainer.enable_progress_bar=false",
        ],
    )
    assert config.data.supervision == "last_turn"  # the published default
    run = build_run(config)
    # tiny_moe has no tokenizer of its own: it reads with the student's.
    assert run.teacher_tokenizer is run.student_tokenizer
    run.datamodule.setup("fit")
    batch = next(iter(run.datamodule.train_dataloader()))
    pos = batch["aligned_teacher_pos"]
    assert pos.shape == batch["input_ids"].shape
    rows, cols = (pos >= 0).nonzero(as_tuple=True)
    assert (
        batch["input_ids"][rows, cols] == batch["teacher_input_ids"][rows, pos[rows, cols]]
    ).all()
    tok = run.student_tokenizer
    answers = tok.decode(batch["input_ids"][0][batch["maskable"][0] & (pos[0] >= 0)])
    assert answers.startswith("Adding") and "It is" not in answers  # the last turn only


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.teacher_view=teacher_first"], "data.teacher_view"),
        (["data.supervision=first_turn"], "data.supervision"),
        (["data.teacher_view=aligned", "data.teacher_max_length=100"], "data.teacher_max_length"),
        (
            [
                "pipeline=cross",
                "objective.variant=calm",
                "teacher.tokenizer={source: unigram}",
                "data.teacher_view=aligned",
            ],
            "data.teacher_view",
        ),
    ],
)
def test_bad_protocol_keys_fail_naming_them(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(CONF / "tiny.yaml", overrides)
