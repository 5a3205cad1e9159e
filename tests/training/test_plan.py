"""The memory plan: exact arithmetic on known sizes, and the cluster configs plan without weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from tide_lightning.cli import main
from tide_lightning.errors import UserError
from tide_lightning.training.plan import (
    ModelSize,
    gather_traffic,
    load_plan_config,
    meta_model_size,
    plan,
    rank_memory,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
GiB = 1024**3


def _shared_config(*overrides: str):
    return load_plan_config(str(CONF / "shared_wedlm.yaml"), list(overrides))


def test_meta_build_counts_the_real_qwen3_sizes():
    # Qwen3-0.6B: 0.596 B with tied embeddings; WeDLM-8B (Qwen3-8B): 8.19 B
    student = meta_model_size(
        {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
         "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
         "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
        "qwen3-0.6b",
    )  # fmt: skip
    assert student.params == 596_049_920


def test_rank_memory_and_gathers_are_the_documented_formulas():
    config = _shared_config("data.batch_size=2", "data.max_length=64")
    student = ModelSize("s", params=1000, hidden=8, layers=2, intermediate=16, vocab=50)
    teacher = ModelSize("t", params=8000, hidden=16, layers=2, intermediate=32, vocab=50)
    m = rank_memory(config, student, teacher, world_size=4)
    assert (m.student, m.gradients, m.optimizer) == (4000, 4000, 8000)
    assert m.teacher_shard == 8000 * 2 // 4  # bf16 on the GPU config, sharded four ways
    # two nodes of 8, shard group = world: a rank gathers 15/16 of the teacher, 8/16 remote
    world = gather_traffic(config, teacher, 16, 8, "world")
    assert (world.gathered, world.cross_node) == (16000 * 15 // 16, 16000 * 8 // 16)
    node = gather_traffic(config, teacher, 16, 8, "node")
    assert (node.shard_group, node.gathered, node.cross_node) == (8, 16000 * 7 // 8, 0)
    assert node.teacher_shard == 16000 // 16 + 16000 // 8  # primary + node-wide partition


def test_plan_of_the_wedlm_config_without_weights(capsys):
    assert main(["plan", "--config", str(CONF / "shared_wedlm.yaml")]) == 0
    out = capsys.readouterr().out
    assert "8.191 B parameters" in out and "0.596 B parameters" in out
    rows = [line for line in out.splitlines() if line.startswith("| 8 |")]
    teacher_shard = float(rows[0].split("|")[2])
    assert teacher_shard == pytest.approx(8.191e9 * 2 / 8 / GiB, abs=0.01)


def test_bad_world_size_is_a_user_error():
    with pytest.raises(UserError, match="world-size"):
        plan(_shared_config(), world_sizes=[0])


def test_node_shard_group_reaches_the_zero3_config_only_across_nodes(tmp_path):
    from tide_lightning.training.builders import build_run

    def node_size(*overrides: str) -> int:
        config = load_plan_config(
            str(CONF / "tiny.yaml"), ["teacher.shard_group=node", f"run_dir={tmp_path}", *overrides]
        )
        return build_run(config).module._teacher_factory.node_size

    assert node_size() == 1  # one node: the node group is the world, no second copy
    assert node_size("trainer.num_nodes=2", "trainer.devices=4") == 4
