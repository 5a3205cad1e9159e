"""The frozen teacher of a run: one object, one setup function.

:func:`setup_teacher` is the one place a teacher is set up: it loads (or takes an
in-memory adapter), picks the dtype and the sharding back-end, shards with ZeRO-3,
logs the per-rank parameter memory and installs the lock-step guard. The defaults
for dtype (bf16 on CUDA, float32 on CPU) and for ``sharding="auto"`` (``deepspeed``
with more than one process) are decided here and nowhere else.
:func:`load_teacher` is its public face with string arguments.

:class:`FrozenTeacher` is what comes back. It is a plain object, not an
``nn.Module``: ``nn.Module.__setattr__`` registers every module attribute as a child,
and a child ends up in ``parameters()`` (so in the optimizer), in ``state_dict()``
(so in every checkpoint), in DDP's module tree and under ``trainer.fit``'s
``.train()`` calls. Assigned to a LightningModule it registers nothing; the teacher
inside stays frozen and in eval mode.

Lightning moves the LightningModule to its device but not the teacher: call
:meth:`FrozenTeacher.to` from the module's ``setup`` (or ``on_fit_start``) hook.

Usage::

    class Distill(L.LightningModule):
        def setup(self, stage):
            self.teacher = setup_teacher("/ckpt/WeDLM-8B", "wedlm")  # after the process group

        def training_step(self, batch, batch_idx):
            ...  # every teacher call, on every rank, even with nothing masked
            self.teacher.end_step()  # before backward: uneven calls caught before DDP's all-reduce
            return loss
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from tide_lightning.errors import UserError
from tide_lightning.models.loading import load_adapter
from tide_lightning.models.quantization import four_bit_config
from tide_lightning.models.sharding import (
    SHARDINGS,
    LockstepGuard,
    local_parameter_bytes,
    resolve_sharding,
    zero3_config,
    zero3_engine,
    zero3_init,
)
from tide_lightning.models.teachers import TEACHER_KINDS, TeacherAdapter

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FrozenTeacher:
    """A frozen teacher, run whole or through a ZeRO-3 engine, kept outside any module tree.

    Args:
        adapter: the teacher (frozen here if it is not yet).
        engine: DeepSpeed engine wrapping ``adapter``, or None (run whole).
        guard: lock-step guard (with ``engine``), or None.
    """

    def __init__(
        self, adapter: TeacherAdapter, engine=None, guard: LockstepGuard | None = None
    ) -> None:
        self.adapter = adapter.freeze()
        self.engine = engine
        self.guard = guard

    @classmethod
    def wrap(cls, teacher: FrozenTeacher | TeacherAdapter) -> FrozenTeacher:
        """``teacher`` itself if already frozen-held, else an unsharded one around it."""
        return teacher if isinstance(teacher, FrozenTeacher) else cls(teacher)

    @property
    def backend(self) -> str:
        return "none" if self.engine is None else "deepspeed"

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
        attention_mask: Tensor | None = None,
        clean_ids: Tensor | None = None,
    ) -> Tensor:
        """Teacher logits at the selected positions, under ``no_grad`` in eval mode.

        Call it on every rank for every pass, even when ``logits_at`` selects nothing
        (sharded forwards are collective); ``[0, V]`` comes back then.

        Args:
            input_ids: Long[B, Lt] teacher ids (the noisy ``xt`` in clean-first mode).
            logits_at: Bool[B, Lt] positions wanted.
            attention_mask: Bool[B, Lt] real tokens, or None.
            clean_ids: Long[B, Lt] the clean ``x0`` (clean-first mode only).

        Returns:
            Float[N, V] in the teacher dtype, rows in row-major order of ``logits_at``.
        """
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
        """Call once per training step on every rank (checks the call counts; no-op whole)."""
        if self.guard is not None:
            self.guard.end_step()

    def to(self, device) -> FrozenTeacher:
        """Move an unsharded teacher (a ZeRO-3 engine or a 4-bit model is already placed)."""
        quantized = getattr(self.adapter.model, "is_quantized", False)
        if self.engine is None and not quantized:
            self.adapter.to(device)
        return self

    def is_frozen(self) -> bool:
        """No parameter requires grad and the module is in eval mode."""
        adapter = self.adapter
        return not adapter.training and not any(p.requires_grad for p in adapter.parameters())

    def local_parameter_bytes(self) -> int:
        """Bytes of teacher parameters on this rank (its ZeRO-3 shard, or everything)."""
        return local_parameter_bytes(self.adapter)


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"teacher dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def setup_teacher(
    source: str | Path | TeacherAdapter,
    kind: str | None = None,
    *,
    sharding: str = "auto",
    dtype: torch.dtype | str | None = None,
    block_size: int = 32,
    mask_token_id: int | None = None,
    trust_remote_code: bool = False,
    guard_timeout_s: float | None = 60.0,
    zero3_options: dict | None = None,
    load_in_4bit: bool = False,
) -> FrozenTeacher:
    """The one place a run sets its teacher up: load, dtype, shard, log memory, guard.

    Call it on every rank, after the process group exists (a LightningModule's
    ``setup`` hook) when sharding.

    Args:
        source: a local checkpoint directory, or an in-memory adapter (test teachers).
        kind: teacher kind (:data:`~tide_lightning.models.teachers.TEACHER_KINDS`);
            required with a directory.
        sharding: ``"auto"`` (``deepspeed`` with more than one process), ``"deepspeed"``
            or ``"none"``.
        dtype: a dtype or its name; default bf16 on CUDA, float32 on CPU. Ignored for
            an in-memory adapter.
        block_size: ``Bk`` of the clean-first layout.
        mask_token_id: override the mask id
            (:func:`~tide_lightning.models.teachers.resolve_mask_id`).
        trust_remote_code: ``generic`` kind only.
        guard_timeout_s: lock-step guard timeout (sharded only), None for no guard.
        zero3_options: extra :func:`~tide_lightning.models.sharding.zero3_config` arguments.
        load_in_4bit: quantize a checkpoint teacher to NF4 at load (the published
            ``--teacher_load_in_4bit``; CUDA, bitsandbytes and sharding none, else refused).

    Returns:
        A :class:`FrozenTeacher`.
    """
    sharding = resolve_sharding(sharding)
    if isinstance(source, TeacherAdapter):
        adapter = source.freeze()
        dtype = next(adapter.parameters()).dtype
    else:
        if kind is None or kind not in TEACHER_KINDS:
            raise UserError(f"teacher kind {kind!r} is not one of {sorted(TEACHER_KINDS)}")
        dtype = _resolve_dtype(dtype)
    config = zero3_config(dtype, **(zero3_options or {})) if sharding == "deepspeed" else None
    if not isinstance(source, TeacherAdapter):
        adapter = load_adapter(
            kind,
            source,
            block_size=block_size,
            dtype=dtype,
            mask_token_id=mask_token_id,
            trust_remote_code=trust_remote_code,
            init_context=None if config is None else lambda: zero3_init(config),
            quantization_config=four_bit_config(sharding, dtype) if load_in_4bit else None,
        )
    if config is None:
        teacher = FrozenTeacher(adapter)
    else:
        engine = zero3_engine(adapter, config)
        guard = None if guard_timeout_s is None else LockstepGuard(guard_timeout_s)
        teacher = FrozenTeacher(adapter, engine, guard)
    log.info(
        "teacher %s: %s, sharding %s, %.1f MB of parameters on this rank",
        adapter.kind.name,
        dtype,
        sharding,
        teacher.local_parameter_bytes() / 2**20,
    )
    return teacher


def load_teacher(
    path: str | Path,
    kind: str,
    dtype: str = "float32",
    sharding: str = "none",
    block_size: int = 32,
) -> FrozenTeacher:
    """Load a frozen teacher from a local directory (the public API; nothing downloads).

    Args:
        path: the checkpoint directory in hub layout (its remote-code files are ignored).
        kind: ``llada2``, ``wedlm``, ``generic`` or ``tiny_moe``.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        sharding: ``none`` (whole on this process) or ``deepspeed`` (ZeRO-3 over the
            process group already initialised, as under Lightning; one is created from
            the ``RANK``/``WORLD_SIZE`` environment only when none exists).
        block_size: the diffusion block ``Bk`` of the clean-first layout (``wedlm``).

    Returns:
        The teacher; ``.logits(input_ids, logits_at, attention_mask=None, clean_ids=None)``
        gives Float[N, V] at the ``logits_at`` positions, rows in row-major order of its
        True entries.

    Example::

        teacher = tide_lightning.load_teacher("/ckpt/WeDLM-8B-Instruct", "wedlm", "bfloat16")
        logits = teacher.logits(xt, xt == teacher.mask_token_id, clean_ids=x0)
    """
    if sharding not in SHARDINGS:
        raise UserError(f"sharding {sharding!r} is not one of {', '.join(SHARDINGS)}")
    return setup_teacher(path, kind, sharding=sharding, dtype=dtype, block_size=block_size)
