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
nothing is masked (:meth:`TeacherAdapter.logits` handles an empty selection).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tide_lightning.models.teachers import TeacherAdapter

BACKENDS = ("none", "deepspeed")


class TeacherLockstepError(RuntimeError):
    """Ranks disagree on how many teacher forwards they run (ZeRO-3 would hang)."""


def zero3_config(
    dtype: torch.dtype = torch.float32,
    persistence_threshold: int = 0,
    prefetch_bucket_size: int = 50_000_000,
    max_live_parameters: int = 1_000_000_000,
) -> dict:
    """A DeepSpeed ZeRO-3 inference config (nested keys, as DeepSpeed reads them).

    Args:
        dtype: teacher dtype; bf16 turns on DeepSpeed's bf16 mode.
        persistence_threshold: parameters with fewer elements stay unpartitioned on
            every rank. DeepSpeed's default (1e5) would leave a tiny test model
            entirely replicated; 0 really shards everything.
        prefetch_bucket_size: elements fetched ahead of use.
        max_live_parameters: elements gathered at once before freeing.

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


class ShardedTeacher:
    """A teacher with the adapter's ``logits`` call, run whole or through ZeRO-3.

    Not an ``nn.Module`` on purpose: nothing of it may enter the student's module tree.

    Args:
        adapter: the frozen teacher.
        engine: DeepSpeed engine wrapping ``adapter``, or None (backend ``none``).
        guard: lock-step guard (with ``engine``), or None.
    """

    def __init__(self, adapter: TeacherAdapter, engine=None, guard: LockstepGuard | None = None):
        self.adapter = adapter
        self.engine = engine
        self.guard = guard
        self.backend = "none" if engine is None else "deepspeed"

    @property
    def kind(self):
        return self.adapter.kind

    @property
    def mask_token_id(self) -> int:
        return self.adapter.mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.adapter.vocab_size

    def logits(
        self,
        input_ids: Tensor,
        logits_at: Tensor,
        *,
        attention_mask: Tensor | None = None,
        clean_ids: Tensor | None = None,
    ) -> Tensor:
        """Same contract as :meth:`TeacherAdapter.logits`: Float[N, V] under no_grad, eval."""
        if self.engine is None:
            return self.adapter.logits(
                input_ids, logits_at, attention_mask=attention_mask, clean_ids=clean_ids
            )
        if self.guard is not None:
            self.guard.before_call()
        self.adapter.eval()
        with torch.no_grad():
            return self.engine(input_ids, logits_at, attention_mask, clean_ids)

    def end_step(self) -> None:
        """Call once per training step on every rank (checks the call counts)."""
        if self.guard is not None:
            self.guard.end_step()

    def to(self, device) -> ShardedTeacher:
        """Move an unsharded teacher (a ZeRO-3 engine already sits on its device)."""
        if self.engine is None:
            self.adapter.to(device)
        return self

    def local_parameter_bytes(self) -> int:
        return local_parameter_bytes(self.adapter)


def shard_teacher(
    teacher: TeacherAdapter,
    backend: str = "deepspeed",
    config: dict | None = None,
    guard_timeout_s: float | None = 60.0,
) -> ShardedTeacher:
    """Wrap a teacher so that ``.logits(...)`` runs whole (``none``) or ZeRO-3 sharded.

    Args:
        teacher: a frozen :class:`TeacherAdapter`, ideally loaded with
            ``load_teacher(..., zero3_config=config)`` so it is partitioned already;
            an in-memory one is partitioned here (it was whole on this rank until now).
        backend: ``"deepspeed"`` or ``"none"``.
        config: DeepSpeed config (default :func:`zero3_config` in the teacher's dtype).
        guard_timeout_s: seconds for the lock-step guard, None to disable it.

    Returns:
        :class:`ShardedTeacher`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"teacher sharding backend {backend!r} is not one of {BACKENDS}")
    if backend == "none":
        return ShardedTeacher(teacher)
    import deepspeed

    ensure_distributed()
    if config is None:
        config = zero3_config(next(teacher.parameters()).dtype)
    if not is_partitioned(teacher):
        deepspeed.zero.Init(module=teacher, config_dict_or_path=config)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    guard = None if guard_timeout_s is None else LockstepGuard(guard_timeout_s)
    return ShardedTeacher(teacher, engine, guard)


def default_backend() -> str:
    """``deepspeed`` with more than one process, ``none`` otherwise."""
    return "deepspeed" if dist.is_initialized() and dist.get_world_size() > 1 else "none"
