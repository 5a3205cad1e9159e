"""Teacher sharding: a DeepSpeed ZeRO-3 inference engine, and a lock-step guard.

The published TIDE code loads the whole teacher on every GPU (31.3 GB for
LLaDA2.0-mini). Here, with more than one process, the teacher's parameters are
partitioned over the ranks with ZeRO-3 (no optimizer: an inference engine); each
forward gathers one layer at a time and frees it again, so per-rank teacher memory
is about ``1 / world_size`` of the weights plus one layer in flight.

Loading never materialises the full model on one rank: transformers'
``HfDeepSpeedConfig`` is kept alive only around ``from_pretrained``
(:func:`zero3_init`), which then builds each parameter already partitioned. It is
released right after, so a student loaded later is an ordinary module trained by
Lightning's DDP/FSDP.

ZeRO-3 forwards are collective: every rank must run the same number of teacher
forwards per step, or the ranks wait for each other forever. :class:`LockstepGuard`
turns that hang into an error: before each forward (and at each step end) the ranks
exchange their call counters over a separate gloo group with a short timeout, so a
mismatch raises on every rank, and a rank that never arrives makes the others raise
after ``timeout_s``. Callers must therefore run the teacher even on a rank where
nothing is masked (:meth:`~tide_lightning.models.teachers.TeacherAdapter.logits`
handles an empty selection).

This module knows nothing of teachers: :mod:`tide_lightning.models.frozen` puts a
teacher behind :func:`zero3_engine` and the guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from tide_lightning.errors import UserError


class TeacherLockstepError(RuntimeError):
    """Ranks disagree on how many teacher forwards they run (ZeRO-3 would hang)."""


SHARDINGS = ("none", "deepspeed")
"""How a teacher runs: whole on every rank, or ZeRO-3 partitioned."""


def resolve_sharding(sharding: str, world_size: int | None = None) -> str:
    """``teacher.sharding`` as it runs: ``auto`` is ``deepspeed`` with more than one process.

    Args:
        sharding: ``auto``, ``deepspeed`` or ``none``.
        world_size: processes; default the initialised process group's size, else 1.

    Raises:
        UserError: any other value.
    """
    if sharding == "auto":
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_initialized() else 1
        return "deepspeed" if world_size > 1 else "none"
    if sharding not in SHARDINGS:
        raise UserError(f"teacher sharding {sharding!r} is not one of auto, {', '.join(SHARDINGS)}")
    return sharding


def zero3_config(
    dtype: torch.dtype = torch.float32,
    persistence_threshold: int = 0,
    prefetch_bucket_size: int = 50_000_000,
    max_live_parameters: int = 1_000_000_000,
    node_size: int = 1,
) -> dict:
    """A DeepSpeed ZeRO-3 inference config (nested keys, as DeepSpeed reads them).

    Args:
        dtype: teacher dtype; bf16 turns on DeepSpeed's bf16 mode.
        persistence_threshold: parameters with fewer elements stay unpartitioned on
            every rank. DeepSpeed's default (1e5) would leave a tiny test model
            entirely replicated; 0 really shards everything.
        prefetch_bucket_size: elements fetched ahead of use.
        max_live_parameters: elements gathered at once before freeing.
        node_size: ranks per node for ``teacher.shard_group: node``; above 1 each rank also
            keeps a secondary partition over its node's ranks (ZeRO++ hierarchical
            partitioning, ``zero_hpz_partition_size``), and every teacher all-gather then
            runs inside the node: per-rank teacher memory ``1/W + 1/node_size`` of the model
            instead of ``1/W``, no teacher traffic between nodes.

    Returns:
        The config dict for ``deepspeed.initialize`` / ``HfDeepSpeedConfig``.
    """
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": persistence_threshold,
            "stage3_prefetch_bucket_size": prefetch_bucket_size,
            "stage3_max_live_parameters": max_live_parameters,
            "zero_hpz_partition_size": node_size,
        },
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": False},
    }


def ensure_distributed() -> None:
    """Initialise torch.distributed through DeepSpeed unless it already is.

    Under Lightning the strategy has initialised it (NCCL on GPU, gloo on CPU) and this
    is a no-op; a standalone CPU run gets gloo from the ``RANK``/``WORLD_SIZE`` variables.
    """
    import deepspeed

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    else:
        deepspeed.init_distributed(dist_backend=dist.get_backend())


@contextmanager
def zero3_init(config: dict) -> Iterator[None]:
    """Make ``from_pretrained`` inside the block build partitioned parameters.

    transformers reads a global weak reference to a live ``HfDeepSpeedConfig``; it is
    set on entry and cleared on exit, so models loaded afterwards are unaffected.
    """
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    ensure_distributed()
    live = HfDeepSpeedConfig(config)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del live


def is_partitioned(module: nn.Module) -> bool:
    """Whether ZeRO-3 already owns the module's parameters."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def local_parameter_bytes(module: nn.Module) -> int:
    """Bytes of parameters this rank holds (its ZeRO-3 shard, or everything)."""
    total = 0
    for p in module.parameters():
        held = p.ds_tensor if hasattr(p, "ds_tensor") else p
        total += held.numel() * held.element_size()
    return total


def full_parameter_count(module: nn.Module) -> int:
    """Elements of all parameters, also for partitioned ones (``ds_numel``)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())


class LockstepGuard:
    """Checks that every rank makes the same teacher calls, with a timeout.

    Creating it is collective (a new gloo group on all ranks).

    Args:
        timeout_s: how long a rank waits for the others before raising.
    """

    CALL, STEP_END = 0, 1

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.calls = 0

    def _exchange(self, tag: int) -> None:
        mine = torch.tensor([tag, self.calls], dtype=torch.long)
        gathered = [torch.zeros_like(mine) for _ in range(self.world_size)]
        what = "teacher call" if tag == self.CALL else "step end"
        try:
            dist.all_gather(gathered, mine, group=self.group)
        except RuntimeError as err:
            raise TeacherLockstepError(
                f"rank {self.rank}: {what} after {self.calls} teacher calls got no answer from "
                f"all ranks within {self.timeout_s:g}s; every rank must call the teacher the "
                "same number of times per step (even with nothing masked)"
            ) from err
        states = [(int(g[0]), int(g[1])) for g in gathered]
        if len(set(states)) > 1:
            described = ", ".join(
                f"rank {r}: {'call' if t == self.CALL else 'step end'} after {n} calls"
                for r, (t, n) in enumerate(states)
            )
            raise TeacherLockstepError(
                f"teacher calls out of step across ranks ({described}); ZeRO-3 would hang. "
                "Every rank must call the teacher the same number of times per step."
            )

    def before_call(self) -> None:
        """Collective check before a teacher forward."""
        self._exchange(self.CALL)
        self.calls += 1

    def end_step(self) -> None:
        """Collective check that all ranks made the same number of calls this step."""
        self._exchange(self.STEP_END)
        self.calls = 0


def mark_zero3_leaves(module: nn.Module) -> list[type]:
    """Have ZeRO-3 gather each mixture-of-experts block whole, on every rank alike.

    ZeRO-3 fetches a submodule's parameters when its forward starts. An MoE block runs
    only the experts its tokens chose, so ranks with different tokens would fetch
    different parameters and their collectives stop matching (gloo aborts with
    "Received data size doesn't match expected size"; NCCL hangs). A leaf module
    (``deepspeed.utils.set_z3_leaf_modules``) is fetched whole on entry. A model names
    such classes in its ``zero3_leaf_classes`` (LLaDA2-MoE: its ``SparseMoeBlock``);
    must run before the engine is built.

    Returns:
        The classes marked (present in ``module`` and declared by a model in it).
    """
    from deepspeed.utils import set_z3_leaf_modules

    present = {type(m) for m in module.modules()}
    declared = [c for m in module.modules() for c in getattr(m, "zero3_leaf_classes", ())]
    classes = [c for c in dict.fromkeys(declared) if c in present]
    if classes:
        set_z3_leaf_modules(module, classes)
    return classes


def zero3_engine(module: nn.Module, config: dict):
    """A ZeRO-3 inference engine (no optimizer) around ``module``; collective.

    A module loaded under :func:`zero3_init` is partitioned already; an in-memory one
    is partitioned here (it was whole on this rank until now).

    Args:
        module: the frozen teacher (its ``forward`` is the whole computation).
        config: DeepSpeed config (:func:`zero3_config`).

    Returns:
        The DeepSpeed engine, in eval mode; call it like ``module``.
    """
    import deepspeed

    ensure_distributed()
    mark_zero3_leaves(module)
    if not is_partitioned(module):
        deepspeed.zero.Init(module=module, config_dict_or_path=config)
    engine, *_ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    return engine
