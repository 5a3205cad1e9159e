"""What :func:`~tide_lightning.method.objective.distill_step` needs from its two models.

The objective is written against these two small protocols, not against the concrete
classes, so any object with the same methods runs it: the BD3LM student, the tiny MoE
trained from scratch with ``ce``, the frozen teacher adapter, its ZeRO-3 sharded wrapper,
the holder the LightningModule keeps, and the recording fakes of the tests. They are
structural (:class:`typing.Protocol`): nothing inherits from them, and
``isinstance(obj, Student)`` checks that the members exist (not their signatures).

Shapes: ``B`` batch rows, ``L`` sequence length, ``N`` the number of selected positions
(``logits_at.sum()``), ``V`` the model's vocabulary (LM-head rows).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Student(Protocol):
    """The model being trained: a block-diffusion denoiser with a training forward."""

    @property
    def mask_token_id(self) -> int:
        """The id written into ``xt`` at masked positions (inside the embedding rows)."""
        ...

    def forward_train(
        self,
        xt: Tensor,
        x0: Tensor,
        logits_at: Tensor,
        block_size: int,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Logits at the selected positions of the noisy sequence, with gradients.

        Args:
            xt: Long[B, L] noisy ids (``mask_token_id`` at the masked positions).
            x0: Long[B, L] clean ids (the block-diffusion student attends to them).
            logits_at: Bool[B, L] positions whose logits are wanted.
            block_size: the block size of the attention rule (docs/method.md §3.2).
            attention_mask: Bool[B, L] real tokens, or None (no padding).

        Returns:
            Float[N, V] logits in ``xt[logits_at]`` order.
        """
        ...


@runtime_checkable
class Teacher(Protocol):
    """A frozen teacher: logits at the positions a loss reads, never a gradient."""

    @property
    def mask_token_id(self) -> int:
        """The teacher's own mask id, written into its inputs at masked positions."""
        ...

    def logits(
        self,
        input_ids: Tensor,
        logits_at: Tensor,
        *,
        attention_mask: Tensor | None = None,
        clean_ids: Tensor | None = None,
    ) -> Tensor:
        """Teacher logits at the selected positions, computed without gradients.

        Every call runs the full forward, even when ``logits_at`` selects nothing (a sharded
        teacher needs every rank in every forward).

        Args:
            input_ids: Long[B', L'] masked ids in the teacher's vocabulary (``B' = 2B`` for
                CompDemo's two passes batched into one call).
            logits_at: Bool[B', L'] positions whose logits are wanted.
            attention_mask: Bool[B', L'] real tokens, or None.
            clean_ids: Long[B', L'] clean ids for teachers that attend to a clean copy first
                (WeDLM's layout); None for bidirectional teachers and the cross pipeline.

        Returns:
            Float[N, V] logits in ``input_ids[logits_at]`` order.
        """
        ...
