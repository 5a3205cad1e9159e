"""Teachers: one adapter that returns logits at the positions a loss needs, and loading.

A teacher is any Hugging Face model with a decoder (``get_decoder()``) and an LM
head (``get_output_embeddings()``), run in one of two attention modes
(docs/method.md, section 5):

- ``bidirectional``: full attention over the teacher's own tokens, padding keys
  removed (LLaDA2, generic masked-diffusion models, the tiny MoE test teacher).
- ``clean_first``: ``[x0 ; xt]`` with the block-diffusion rule mirrored
  (:func:`tide_lightning.models.masks.bd3lm_allowed` with ``clean_first=True``) and
  duplicated position ids (WeDLM). Logits come from the noisy (second) half.

Each kind is one registry entry (:data:`TEACHER_KINDS`) holding its ids, mode and the
mask form its code reads: ``"additive"`` (0 / dtype-min float, correct under eager and
SDPA) or ``"bool"`` (``True`` = attend; SDPA only). The decoder runs on the whole
sequence but the LM head only on the selected rows, so a 157k-row head is never
applied to positions no loss reads.

Loading a teacher from a checkpoint directory is :mod:`tide_lightning.models.loading`.

The adapter's ``forward`` is the whole computation, so a DeepSpeed engine can wrap
the adapter (:mod:`tide_lightning.models.frozen`) and every rank runs the same
module sequence.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tide_lightning.errors import UserError
from tide_lightning.models import masks


@dataclass(frozen=True)
class TeacherKind:
    """Registry entry for one family of teacher checkpoints.

    Attributes:
        name: registry key.
        mode: ``"bidirectional"`` or ``"clean_first"``.
        mask_token_id: the teacher's own mask id (None: from ``config.json`` or given).
        pad_token_id: padding id in the teacher's tokenization.
        eos_token_id: end-of-sequence id.
        shared_vocab_size: leading ids shared with the student (shared pipeline), or None.
        mask_format: ``"additive"`` or ``"bool"`` (see module docstring).
        sdpa_only: refuse any attention back-end but SDPA (LLaDA2's eager path reads a
            4-D mask as 0/1, so no mask form is right there).
    """

    name: str
    mode: str
    mask_token_id: int | None
    pad_token_id: int | None
    eos_token_id: int | None
    shared_vocab_size: int | None
    mask_format: str
    sdpa_only: bool = False


TEACHER_KINDS: dict[str, TeacherKind] = {
    "llada2": TeacherKind(
        "llada2", "bidirectional", 156895, 156892, 156892, None, "additive", sdpa_only=True
    ),
    "wedlm": TeacherKind("wedlm", "clean_first", 151665, 151643, 151645, 151646, "additive"),
    "generic": TeacherKind("generic", "bidirectional", None, None, None, None, "additive"),
    "tiny_moe": TeacherKind("tiny_moe", "bidirectional", None, None, None, None, "bool"),
    "tiny_moe_clean_first": TeacherKind(
        "tiny_moe_clean_first", "clean_first", None, None, None, None, "bool"
    ),
}
TINY_KINDS = ("tiny_moe", "tiny_moe_clean_first")
"""The kinds :func:`build_tiny_moe_teacher` builds in-process (same model, two layouts)."""
MODES = ("bidirectional", "clean_first")
MASK_FORMATS = ("additive", "bool")


def teacher_kind(name: str, **overrides) -> TeacherKind:
    """Registry entry ``name`` with some fields replaced (e.g. ``mask_token_id=...``).

    Raises:
        UserError: unknown kind, mode or mask format (the value is named).
    """
    if name not in TEACHER_KINDS:
        raise UserError(f"unknown teacher kind {name!r}; known: {sorted(TEACHER_KINDS)}")
    kind = dataclasses.replace(
        TEACHER_KINDS[name], **{k: v for k, v in overrides.items() if v is not None}
    )
    if kind.mode not in MODES:
        raise UserError(f"teacher mode {kind.mode!r} is not one of {MODES}")
    if kind.mask_format not in MASK_FORMATS:
        raise UserError(f"teacher mask_format {kind.mask_format!r} is not one of {MASK_FORMATS}")
    return kind


def resolve_mask_id(
    kind: str, path: str | Path | None = None, override: int | None = None, tokenizer=None
) -> int:
    """The teacher's mask id, decided here and nowhere else.

    In this order: ``override`` (``teacher.mask_token_id``), ``mask_token_id`` in the
    checkpoint's ``config.json`` (the checkpoint knows best), the kind's registry entry
    (LLaDA2's config.json has none), the tokenizer's mask token.

    Raises:
        UserError: none of them gives one.
    """
    candidates = [override]
    if path is not None and (Path(path) / "config.json").is_file():
        candidates.append(json.loads((Path(path) / "config.json").read_text()).get("mask_token_id"))
    candidates.append(teacher_kind(kind).mask_token_id)
    if tokenizer is not None:
        candidates.append(tokenizer.mask_token_id)
    for candidate in candidates:
        if candidate is not None:
            return int(candidate)
    raise UserError(f"no mask id for teacher {kind!r} at {path!r}: set teacher.mask_token_id")


def _rows(weight: Tensor) -> int:
    """Rows of a weight, also when ZeRO-3 holds only a shard locally (``ds_shape``)."""
    return getattr(weight, "ds_shape", weight.shape)[0]


def _check_attention_backend(model: nn.Module, kind: TeacherKind) -> None:
    """Refuse back-ends that would silently misread a 4-D mask.

    FlashAttention kernels ignore an arbitrary 4-D mask; a boolean mask is only read
    correctly by SDPA (eager would add it as 0/1); ``sdpa_only`` kinds take nothing else.
    """
    impl = getattr(model.config, "_attn_implementation", None) or "default"
    if impl.startswith("flash_attention"):
        raise UserError(
            f"teacher {kind.name!r} runs {impl!r}, which ignores the 4-D attention mask; "
            "load it with attn_implementation='sdpa'"
        )
    if kind.sdpa_only and impl != "sdpa":
        raise UserError(
            f"teacher {kind.name!r} runs {impl!r}; its attention reads the 4-D mask correctly "
            "only under 'sdpa'"
        )
    if kind.mask_format == "bool" and impl != "sdpa":
        raise UserError(
            f"teacher {kind.name!r} passes a boolean mask but runs {impl!r}; only 'sdpa' reads "
            "it correctly (use mask_format='additive')"
        )


class TeacherAdapter(nn.Module):
    """One call for every teacher: logits at the selected positions.

    Args:
        model: HF model with ``get_decoder()`` and ``get_output_embeddings()``.
        kind: its registry entry (ids resolved).
        block_size: ``Bk`` of the clean-first layout (unused in bidirectional mode).
        frozen: freeze now (no grad, eval mode). ``False`` only to train a test teacher.
    """

    def __init__(
        self, model: nn.Module, kind: TeacherKind, block_size: int = 32, frozen: bool = True
    ):
        super().__init__()
        rows = _rows(model.get_input_embeddings().weight)
        if kind.mask_token_id is None or not 0 <= kind.mask_token_id < rows:
            raise UserError(
                f"teacher {kind.name!r} mask id {kind.mask_token_id} is outside its {rows} "
                "embedding rows"
            )
        _check_attention_backend(model, kind)
        self.model = model
        self.kind = kind
        self.block_size = block_size
        if frozen:
            self.freeze()

    @property
    def mask_token_id(self) -> int:
        return self.kind.mask_token_id

    @property
    def vocab_size(self) -> int:
        return _rows(self.model.get_output_embeddings().weight)

    def freeze(self) -> TeacherAdapter:
        """No parameter requires grad; eval mode."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> TeacherAdapter:
        """Keep a frozen teacher in eval mode whatever a caller asks."""
        frozen = not any(p.requires_grad for p in self.parameters())
        return super().train(mode and not frozen)

    def _mask(self, allowed: Tensor) -> Tensor:
        # A 4-D mask is taken as given by transformers 5 (no causal rule added): the
        # same cells as the published WeDLM trainer's prepared {"full_attention": m}
        # dict, which the conformance fixtures check against the remote code.
        if self.kind.mask_format == "bool":
            return allowed
        return masks.to_additive(allowed, self.model.get_input_embeddings().weight.dtype)

    def _layout(self, input_ids, logits_at, attention_mask, clean_ids):
        batch, length = input_ids.shape
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.bool()
        )
        if self.kind.mode == "bidirectional":
            pos = torch.arange(length, device=input_ids.device)[None].expand(batch, -1)
            return input_ids, pos, self._mask(masks.bidirectional_batch_mask(valid)), logits_at
        if clean_ids is None:
            raise ValueError(f"teacher {self.kind.name!r} (clean_first mode) needs clean_ids")
        ids = torch.cat([clean_ids, input_ids], dim=1)
        pos = torch.arange(length, device=input_ids.device).repeat(2)[None].expand(batch, -1)
        allowed = masks.bd3lm_batch_mask(valid, length, self.block_size, clean_first=True)
        select = torch.cat([torch.zeros_like(logits_at), logits_at], dim=1)
        return ids, pos, self._mask(allowed), select

    def forward(
        self,
        input_ids: Tensor,
        logits_at: Tensor,
        attention_mask: Tensor | None = None,
        clean_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits at ``logits_at`` (with autograd if enabled; see :meth:`logits`).

        Args:
            input_ids: Long[B, Lt] teacher ids (the noisy ``xt`` in clean-first mode).
            logits_at: Bool[B, Lt] positions wanted.
            attention_mask: Bool[B, Lt] real tokens, or None.
            clean_ids: Long[B, Lt] the clean ``x0`` (clean-first mode only).

        Returns:
            Float[N, V] in the model dtype, rows in row-major order of ``logits_at``.
        """
        ids, pos, mask, select = self._layout(
            input_ids, logits_at.bool(), attention_mask, clean_ids
        )
        # A teacher pass is never continued: a KV cache would be built and thrown away.
        out = self.model.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
        )
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return self.model.get_output_embeddings()(hidden[select])

    def logits(
        self,
        input_ids: Tensor,
        logits_at: Tensor,
        *,
        attention_mask: Tensor | None = None,
        clean_ids: Tensor | None = None,
    ) -> Tensor:
        """Frozen-teacher call: :meth:`forward` under ``no_grad`` in eval mode.

        Always call it, even when ``logits_at`` selects nothing: the full forward still
        runs (sharded teachers need every rank in every forward) and ``[0, V]`` comes back.
        """
        self.eval()
        with torch.no_grad():
            return self(input_ids, logits_at, attention_mask=attention_mask, clean_ids=clean_ids)

    def forward_train(
        self,
        xt: Tensor,
        x0: Tensor,
        logits_at: Tensor,
        block_size: int | None = None,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Training forward with the student's signature (train a masked-diffusion teacher with ``ce``).

        Bidirectional mode ignores ``x0`` and ``block_size``: the model sees ``xt`` only.

        Returns:
            Float[N, V] logits at ``logits_at`` of ``xt``.
        """
        clean = x0 if self.kind.mode == "clean_first" else None
        return self(xt, logits_at, attention_mask=attention_mask, clean_ids=clean)

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Write an HF directory :func:`~tide_lightning.models.loading.load_adapter` reads (``tiny_moe``/``generic`` kinds)."""
        self.model.config.mask_token_id = self.kind.mask_token_id
        self.model.save_pretrained(str(directory))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))


def build_tiny_moe_teacher(
    vocab_size: int,
    mask_token_id: int,
    pad_token_id: int | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    num_experts: int = 4,
    experts_per_token: int = 2,
    moe_intermediate_size: int = 32,
    seed: int | None = None,
    frozen: bool = True,
    dtype: torch.dtype = torch.float32,
    kind: str = "tiny_moe",
    block_size: int = 32,
) -> TeacherAdapter:
    """A few-million-parameter (or smaller) real MoE teacher: transformers' Qwen3-MoE.

    It is a masked-diffusion model; train it with :meth:`TeacherAdapter.forward_train`
    (``frozen=False``) or use it random. ``kind`` picks the layout: ``tiny_moe`` reads
    ``xt`` fully bidirectionally (LLaDA2's mode), ``tiny_moe_clean_first`` reads
    ``[x0 ; xt]`` block by block (WeDLM's mode), so it conditions on what a BD3LM student
    of the same ``block_size`` sees.

    Returns:
        :class:`TeacherAdapter` of ``kind``.
    """
    if kind not in TINY_KINDS:
        raise ValueError(f"build_tiny_moe_teacher builds {TINY_KINDS}, not {kind!r}")
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=moe_intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        num_experts=num_experts,
        num_experts_per_tok=experts_per_token,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        mask_token_id=mask_token_id,
        use_cache=False,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config).to(dtype)
    model.set_attn_implementation("sdpa")
    spec = teacher_kind(kind, mask_token_id=mask_token_id, pad_token_id=pad_token_id)
    return TeacherAdapter(model, spec, block_size=block_size, frozen=frozen)


def build_teacher(
    kind: str, model: nn.Module | None = None, block_size: int = 32, **kwargs
) -> TeacherAdapter:
    """Wrap an in-memory model as a teacher of ``kind``; the tiny kinds build their own.

    Args:
        kind: a :data:`TEACHER_KINDS` key.
        model: the HF model (not for the :data:`TINY_KINDS`).
        block_size: ``Bk`` of the clean-first layout.
        **kwargs: tiny kinds: :func:`build_tiny_moe_teacher` arguments; otherwise
            registry overrides (``mask_token_id``, ``pad_token_id``, ...).
    """
    if kind in TINY_KINDS:
        return build_tiny_moe_teacher(**kwargs, kind=kind, block_size=block_size)
    if model is None:
        raise ValueError(f"teacher kind {kind!r} needs a model (or use load_teacher)")
    return TeacherAdapter(model, teacher_kind(kind, **kwargs), block_size=block_size)
