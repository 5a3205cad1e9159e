"""How a LightningModule holds a teacher without owning it.

``nn.Module.__setattr__`` registers every ``nn.Module`` attribute as a child, and a
child ends up everywhere: in ``parameters()`` (so in the optimizer), in
``state_dict()`` (so in every checkpoint), in DDP's module tree (gradient buckets,
broadcast of the whole teacher at start) and under ``trainer.fit``'s ``.train()``
calls. :class:`TeacherHolder` is a plain object, so assigning it to a LightningModule
registers nothing; the teacher inside stays frozen and in eval mode.

Lightning moves the LightningModule to its device but not the holder: call
:meth:`TeacherHolder.to` from the module's ``setup`` (or ``on_fit_start``) hook.

Usage::

    class Distill(L.LightningModule):
        def __init__(self, student, teacher):
            super().__init__()
            self.student = student
            self.teacher = TeacherHolder(teacher)

        def setup(self, stage):
            self.teacher.to(self.device)

        def training_step(self, batch, batch_idx):
            ...  # every teacher call, on every rank, even with nothing masked
            self.teacher.end_step()  # before backward: catches uneven calls before DDP's all-reduce
            return loss
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from tide_lightning.models.sharding import (
    ShardedTeacher,
    default_backend,
    shard_teacher,
    zero3_config,
)
from tide_lightning.models.teachers import TeacherAdapter, load_teacher

log = logging.getLogger(__name__)


class TeacherHolder:
    """A frozen teacher kept outside any module tree.

    Args:
        teacher: a :class:`TeacherAdapter` (frozen here if it is not yet) or a
            :class:`ShardedTeacher`.
    """

    def __init__(self, teacher: TeacherAdapter | ShardedTeacher) -> None:
        if isinstance(teacher, TeacherAdapter):
            teacher = ShardedTeacher(teacher.freeze())
        teacher.adapter.freeze()
        self._teacher = teacher

    @property
    def teacher(self) -> ShardedTeacher:
        return self._teacher

    @property
    def adapter(self) -> TeacherAdapter:
        return self._teacher.adapter

    @property
    def mask_token_id(self) -> int:
        return self._teacher.mask_token_id

    def logits(
        self,
        input_ids: Tensor,
        logits_at: Tensor,
        *,
        attention_mask: Tensor | None = None,
        clean_ids: Tensor | None = None,
    ) -> Tensor:
        """Float[N, V] teacher logits at ``logits_at`` (no grad, eval); see :class:`TeacherAdapter`."""
        return self._teacher.logits(
            input_ids, logits_at, attention_mask=attention_mask, clean_ids=clean_ids
        )

    def end_step(self) -> None:
        """Lock-step check at the end of each training step (no-op unsharded)."""
        self._teacher.end_step()

    def to(self, device) -> TeacherHolder:
        """Move an unsharded teacher to ``device``."""
        self._teacher.to(device)
        return self

    def is_frozen(self) -> bool:
        """No parameter requires grad and the module is in eval mode."""
        adapter = self.adapter
        return not adapter.training and not any(p.requires_grad for p in adapter.parameters())


def setup_teacher(
    kind: str,
    path: str | Path,
    *,
    backend: str = "auto",
    block_size: int = 32,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool | None = None,
    guard_timeout_s: float | None = 60.0,
    **overrides,
) -> TeacherHolder:
    """The one place a run sets its teacher up: load, shard, freeze, log its memory.

    Call it after the process group exists (a LightningModule's ``setup`` hook) and on
    every rank.

    Args:
        kind: teacher kind (:data:`tide_lightning.models.teachers.TEACHER_KINDS`).
        path: local checkpoint directory.
        backend: ``"auto"`` (``deepspeed`` with more than one process, else ``none``),
            ``"deepspeed"`` or ``"none"``.
        block_size: ``Bk`` of the clean-first layout.
        dtype: default bf16 on CUDA, float32 on CPU.
        trust_remote_code: default from the registry.
        guard_timeout_s: lock-step guard timeout (sharded only).
        **overrides: registry fields (``mask_token_id``, ...).

    Returns:
        A :class:`TeacherHolder`.
    """
    if backend == "auto":
        backend = default_backend()
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    config = zero3_config(dtype) if backend == "deepspeed" else None
    adapter = load_teacher(
        kind,
        path,
        block_size=block_size,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        zero3_config=config,
        **overrides,
    )
    return hold_teacher(adapter, backend, config, guard_timeout_s)


def hold_teacher(
    adapter: TeacherAdapter,
    backend: str = "auto",
    config: dict | None = None,
    guard_timeout_s: float | None = 60.0,
) -> TeacherHolder:
    """Shard (or not) a teacher already built, log its memory on this rank and hold it.

    :func:`setup_teacher` ends here after loading; an in-memory teacher (the tiny test
    teachers) starts here.

    Args:
        adapter: the teacher.
        backend: as for :func:`setup_teacher`.
        config: DeepSpeed config (default :func:`zero3_config` in the teacher's dtype).
        guard_timeout_s: lock-step guard timeout (sharded only).

    Returns:
        A :class:`TeacherHolder`.
    """
    if backend == "auto":
        backend = default_backend()
    teacher = shard_teacher(adapter, backend, config, guard_timeout_s)
    log.info(
        "teacher %s: backend %s, %.1f MB of parameters on this rank",
        adapter.kind.name,
        backend,
        teacher.local_parameter_bytes() / 2**20,
    )
    return TeacherHolder(teacher)
