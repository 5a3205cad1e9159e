"""Memory plan without weights: what one rank holds and moves, from the configs alone.

``python -m tide_lightning plan --config FILE`` builds the student and the teacher on the
meta device (no memory, no weights) from their ``config.json`` and prints, per world size,
the bytes of the teacher shard, the student, its gradients and optimizer state and an
activation estimate at the configured batch and lengths; then, per teacher sharding
setting, the bytes each rank all-gathers per step and how many of them cross nodes.

Where the configured model directory is not on this machine (a cluster path, an unset
``TIDE_TEACHER``), the architecture comes from the bundled ``conf/models/*.json`` of the
kind (the published checkpoints' sizes), so the plan of a cluster config runs anywhere.

The estimates are analytic and deliberately simple (they say what they count):

- Student, trained data-parallel (DDP): fp32 parameters, fp32 gradients, AdamW's two fp32
  moments, each whole on every rank.
- Student activations: per layer ``34 * s * b * h`` bytes in bf16 (Korthikanti et al. 2022,
  attention scores excluded since SDPA/flex never materialise them), over the ``2L``
  training layout; with gradient checkpointing one layer's worth plus each layer's input.
  The loss keeps logits and their gradient only at masked rows (about half of the ``L``
  positions on average): ``2 * (b * L / 2) * V * 2`` bytes.
- Teacher (inference, no grad): one layer's working set over its rows (``2B`` with
  CompDemo, batched into one forward; ``2 * teacher_max_length`` tokens in the shared
  pipeline's clean-first layout, ``teacher_max_length`` in the cross one) plus its logits
  at the masked rows.
- ZeRO-3 teacher: each forward all-gathers every parameter, so a rank receives
  ``(S - 1) / S`` of the teacher per forward, ``S`` the size of the shard group. With the
  group spanning the world, ``(W - G) / W`` of it comes from other nodes (``G`` GPUs per
  node). With ``teacher.shard_group: node`` (ZeRO++ hierarchical partitioning) each rank
  keeps a second partition over its node's ranks and every gather runs inside the node:
  ``(G - 1) / G`` of the teacher per forward, none of it across nodes, for
  ``1 / W + 1 / G`` of the teacher held per rank instead of ``1 / W``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from tide_lightning.config import TINY_TEACHER_KINDS, RunConfig
from tide_lightning.errors import UserError

MODELS_DIR = Path(__file__).resolve().parents[2] / "conf" / "models"
BUNDLED = {
    "bd3lm": "qwen3_0.6b_bd3lm.json",
    "llada2": "llada2_mini.json",
    "wedlm": "wedlm_8b.json",
}
ENV_PATHS = ("TIDE_STUDENT", "TIDE_TEACHER", "TIDE_DATA")
GiB = 1024**3
ADAM_MOMENTS = 2


@dataclass(frozen=True)
class ModelSize:
    """Sizes of one model read off its meta-device instance."""

    name: str
    """Where the architecture came from (a directory or a bundled config)."""
    params: int
    """Distinct parameters (tied weights counted once)."""
    hidden: int
    layers: int
    intermediate: int
    vocab: int


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at the peak of a training step."""

    world_size: int
    teacher_shard: int
    student: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return (
            self.teacher_shard + self.student + self.gradients + self.optimizer + self.activations
        )


@dataclass(frozen=True)
class GatherTraffic:
    """Teacher all-gather traffic of one rank per optimizer step."""

    setting: str
    world_size: int
    nodes: int
    shard_group: int
    teacher_shard: int
    gathered: int
    cross_node: int


def _architecture(path: str | None, kind: str) -> tuple[dict, str]:
    """The ``config.json`` of ``path`` if it is here, else the bundled one of ``kind``."""
    if path:
        candidate = Path(path) / "config.json"
        if candidate.is_file():
            return json.loads(candidate.read_text(encoding="utf-8")), str(Path(path))
    if kind not in BUNDLED:
        raise UserError(
            f"no config.json under {path!r} and no bundled architecture for kind {kind!r} "
            f"(bundled: {sorted(BUNDLED)})"
        )
    bundled = MODELS_DIR / BUNDLED[kind]
    return json.loads(bundled.read_text(encoding="utf-8")), f"bundled {bundled.name}"


def meta_model_size(architecture: dict, name: str) -> ModelSize:
    """Build the model of ``architecture`` (a config.json dict) on the meta device; its sizes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type = architecture["model_type"]
    if model_type.startswith("llada2"):
        # our own implementation registers llada2_moe with the Auto classes on import
        importlib.import_module("tide_lightning.models.llada2")
        model_type = "llada2_moe"
    fields = {k: v for k, v in architecture.items() if k not in ("model_type", "auto_map")}
    config = AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields tied ones once
    return ModelSize(
        name=name,
        params=params,
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
    )


@contextlib.contextmanager
def _placeholder_env():
    """Let a cluster config load here: unset ``TIDE_*`` paths read as empty for the plan."""
    missing = [name for name in ENV_PATHS if name not in os.environ]
    for name in missing:
        os.environ[name] = ""
    try:
        yield
    finally:
        for name in missing:
            os.environ.pop(name, None)


def load_plan_config(path: str, overrides: list[str]) -> RunConfig:
    """``load_config`` with the cluster configs' path variables allowed to be unset."""
    from tide_lightning.config import load_config

    with _placeholder_env():
        return load_config(path, overrides)


def _bf16(config: RunConfig) -> bool:
    precision = config.trainer.precision or ""
    return "bf16" in precision or "16" in precision or config.trainer.accelerator == "gpu"


def rank_memory(
    config: RunConfig, student: ModelSize, teacher: ModelSize | None, world_size: int
) -> RankMemory:
    """Per-rank bytes of a training step (see the module docstring for what is counted)."""
    half = 2 if _bf16(config) else 4
    batch, length = config.data.batch_size, config.data.max_length
    tokens = 2 * length * batch  # the [xt ; x0] layout
    per_layer = 34 * tokens * student.hidden * half // 2  # 34 sbh bytes at 2 bytes/value
    if config.student.gradient_checkpointing:
        student_act = per_layer + student.layers * tokens * student.hidden * half
    else:
        student_act = per_layer * student.layers
    masked_rows = batch * length // 2
    student_act += 2 * masked_rows * student.vocab * half
    teacher_shard = teacher_act = 0
    if teacher is not None:
        sharded = config.teacher.sharding != "none" and world_size > 1
        teacher_shard = teacher.params * half // (world_size if sharded else 1)
        rows = batch * (2 if _compdemo(config) else 1)
        # cross: bidirectional over its own tokens; shared: the clean-first [x0 ; xt] layout
        teacher_len = config.data.teacher_max_length * (1 if config.pipeline == "cross" else 2)
        width = max(teacher.hidden * 6, teacher.intermediate * 3)
        # each masked row's logits come from one of the CompDemo passes
        teacher_act = rows * teacher_len * width * half + masked_rows * teacher.vocab * half
    return RankMemory(
        world_size=world_size,
        teacher_shard=teacher_shard,
        student=student.params * 4,
        gradients=student.params * 4,
        optimizer=student.params * 4 * ADAM_MOMENTS,
        activations=student_act + teacher_act,
    )


def _compdemo(config: RunConfig) -> bool:
    from tide_lightning.method.variants import get_variant

    explicit = config.objective.compdemo
    return get_variant(config.objective.variant).compdemo if explicit is None else explicit


def gather_traffic(
    config: RunConfig, teacher: ModelSize, world_size: int, gpus_per_node: int, setting: str
) -> GatherTraffic:
    """Bytes one rank all-gathers per optimizer step for the teacher, and across nodes."""
    half = 2 if _bf16(config) else 4
    teacher_bytes = teacher.params * half
    nodes = math.ceil(world_size / gpus_per_node)
    local = min(world_size, gpus_per_node)
    group = local if setting == "node" else world_size
    forwards = config.trainer.accumulate_grad_batches  # CompDemo is one batched forward
    gathered = forwards * teacher_bytes * (group - 1) // group
    cross = 0 if setting == "node" else forwards * teacher_bytes * (world_size - local) // group
    shard = teacher_bytes // world_size
    if setting == "node" and nodes > 1:  # the secondary, node-wide partition comes on top
        shard += teacher_bytes // local
    return GatherTraffic(setting, world_size, nodes, group, shard, gathered, cross)


def _gib(n: int) -> str:
    return f"{n / GiB:8.2f}"


def format_plan(
    config: RunConfig,
    student: ModelSize,
    teacher: ModelSize | None,
    world_sizes: list[int],
    gpus_per_node: int,
) -> str:
    """The plan as two Markdown tables (GiB per rank; GiB per step)."""
    lines = [
        f"student: {student.name}, {student.params / 1e9:.3f} B parameters",
        f"teacher: {teacher.name}, {teacher.params / 1e9:.3f} B parameters"
        if teacher
        else "teacher: none",
        f"batch {config.data.batch_size} per rank, student length {config.data.max_length}, "
        f"teacher length {config.data.teacher_max_length}, "
        f"gradient checkpointing {config.student.gradient_checkpointing}, "
        f"CompDemo {_compdemo(config)}, teacher sharding {config.teacher.sharding if config.teacher else '-'}",
        "",
        "| world | teacher shard | student | gradients | optimizer | activations | total (GiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for world in world_sizes:
        m = rank_memory(config, student, teacher, world)
        cells = [m.teacher_shard, m.student, m.gradients, m.optimizer, m.activations, m.total]
        lines.append(f"| {world} | " + " | ".join(_gib(c).strip() for c in cells) + " |")
    if teacher is not None:
        lines += [
            "",
            f"teacher all-gather per optimizer step, {gpus_per_node} GPUs per node:",
            "",
            "| shard_group | world | nodes | shard size | teacher shard | gathered | across nodes (GiB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for world in sorted({*world_sizes, 2 * gpus_per_node, 4 * gpus_per_node}):
            # on one node the node group is the world: one row says it all
            settings = ("world", "node") if world > gpus_per_node else ("world",)
            for setting in settings:
                g = gather_traffic(config, teacher, world, gpus_per_node, setting)
                lines.append(
                    f"| {setting} | {world} | {g.nodes} | {g.shard_group} | "
                    f"{_gib(g.teacher_shard).strip()} | {_gib(g.gathered).strip()} | "
                    f"{_gib(g.cross_node).strip()} |"
                )
    return "\n".join(lines) + "\n"


def plan(
    config: RunConfig, world_sizes: list[int] | None = None, gpus_per_node: int | None = None
) -> str:
    """Build both models on the meta device and return the formatted plan."""
    sizes = sorted(set(world_sizes or [1, 2, 4, 8]))
    if any(w < 1 for w in sizes):
        raise UserError(f"--world-size must be >= 1, got {sizes}")
    per_node = gpus_per_node or config.trainer.devices
    if per_node < 1:
        raise UserError(f"--gpus-per-node must be >= 1, got {per_node}")
    arch, name = _architecture(config.student.path, "bd3lm")
    student = meta_model_size(arch, name)
    teacher = None
    if config.teacher is not None and config.teacher.kind in TINY_TEACHER_KINDS:
        raise UserError(
            f"plan covers checkpoint teachers; teacher.kind={config.teacher.kind} is built "
            "in-process"
        )
    if config.teacher is not None:
        arch, name = _architecture(config.teacher.path, config.teacher.kind)
        teacher = meta_model_size(arch, name)
    return format_plan(config, student, teacher, sizes, per_node)
