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
"""

from __future__ import annotations

from torch import Tensor

from tide_lightning.models.sharding import ShardedTeacher
from tide_lightning.models.teachers import TeacherAdapter


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
