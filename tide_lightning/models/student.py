"""The block-diffusion (BD3LM) student: a Qwen3 backbone run under the docs/method.md §3.2 mask.

The student is plain Qwen3 weights; what makes it a block-diffusion model is how it
is called. Training runs ``[xt ; x0]`` (length ``2L``) with duplicated position ids
and the block mask of :mod:`tide_lightning.models.masks`; the LM head runs only on the
noisy positions a loss needs (the vocabulary is 151,936 rows, so a full ``2L x V``
logit tensor would dominate memory). Sampling reuses the clean half's rule block by
block with a key/value cache (:mod:`tide_lightning.models.kv_cache`).

Attention back-end: SDPA with a boolean 4-D mask everywhere by default; flex
attention with a ``BlockMask`` (same predicate) for training when CUDA is present
and ``attention="flex"``/``"auto"``. Eager attention and FlashAttention-2 are never
used: both would silently ignore or misread the mask.

The published checkpoint declares ``model_type: "a2d-qwen3"``. We register a tiny
config/model pair under that name with the transformers Auto classes (no remote code),
identical to Qwen3 except for the name and the stored ``mask_token_id``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForMaskedLM, Qwen3Config, Qwen3ForCausalLM

from tide_lightning.models import masks
from tide_lightning.models.kv_cache import BlockCache

STUDENT_MODEL_TYPES = ("a2d-qwen3", "qwen3")
MASK_TOKEN = "<|mask|>"


class A2DQwen3Config(Qwen3Config):
    """Qwen3 config under the published BD3LM ``model_type``."""

    model_type = "a2d-qwen3"


class A2DQwen3Model(Qwen3ForCausalLM):
    """Qwen3 weights and modules, loaded for block diffusion (same parameter names)."""

    config_class = A2DQwen3Config


# transformers renamed ``past_key_values`` to ``cache`` in 5.x; an unknown keyword would be
# swallowed by ``**kwargs`` silently, so pick the name this version declares.
_CACHE_KWARG = (
    "cache"
    if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters
    else "past_key_values"
)

AutoConfig.register("a2d-qwen3", A2DQwen3Config, exist_ok=True)
AutoModelForMaskedLM.register(A2DQwen3Config, A2DQwen3Model, exist_ok=True)


def resolve_attention(attention: str) -> str:
    """Map ``"auto" | "sdpa" | "flex"`` to a transformers attention implementation name."""
    if attention not in ("auto", "sdpa", "flex"):
        raise ValueError(f"attention must be 'auto', 'sdpa' or 'flex', got {attention!r}")
    if attention == "flex" and not torch.cuda.is_available():
        raise ValueError("attention='flex' needs CUDA; use 'sdpa' on CPU")
    if attention == "flex" or (attention == "auto" and torch.cuda.is_available()):
        return "flex_attention"
    return "sdpa"


class BD3LMStudent(nn.Module):
    """Block-diffusion student around a Qwen3 causal-LM module.

    Args:
        model: a ``Qwen3ForCausalLM`` (or :class:`A2DQwen3Model`) instance.
        mask_token_id: id of ``<|mask|>``, inside the embedding rows.
    """

    def __init__(self, model: Qwen3ForCausalLM, mask_token_id: int) -> None:
        super().__init__()
        rows = model.get_input_embeddings().weight.shape[0]
        if not 0 <= mask_token_id < rows:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the {rows} embedding rows")
        if model.config._attn_implementation not in ("sdpa", "flex_attention"):
            raise ValueError(
                f"attention implementation {model.config._attn_implementation!r} would misread "
                "the block-diffusion mask; load with attention='sdpa' or 'flex' (student.attention)"
            )
        self.model = model
        self.mask_token_id = mask_token_id
        model.config.mask_token_id = mask_token_id

    def set_attention(self, attention: str) -> None:
        """Switch the back-end (``"sdpa" | "flex" | "auto"``), e.g. to SDPA for cached decoding.

        Cached decoding passes additive float masks, correct under flex attention too
        but slower there (a score-mod per element), so samplers may prefer SDPA.
        """
        self.model.set_attn_implementation(resolve_attention(attention))

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head (may exceed the tokenizer length)."""
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def _hidden(self, input_ids: Tensor, position_ids: Tensor, mask, cache=None) -> Tensor:
        out = self.model.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=cache is not None,
            **{_CACHE_KWARG: cache},
        )
        return out.last_hidden_state

    def _decode_hidden(
        self, input_ids: Tensor, position_ids: Tensor, mask: Tensor | None, cache: BlockCache
    ) -> Tensor:
        """:meth:`_hidden` for cached decoding, calling the decoder layers directly.

        Same modules in the same order as ``Qwen3Model.forward`` given a ready 4-D mask,
        minus its per-call machinery (keyword deprecation, config-default merging,
        output capture, mask preprocessing that returns the 4-D mask unchanged). On a
        small model on CPU that machinery is about a tenth of a denoising step, which is
        paid at every step. Every layer gets the same mask, as ``Qwen3Model`` does when
        handed a 4-D one. ``mask=None`` means "every query sees every key": attention
        then runs unmasked and non-causal, which SDPA does faster (no mask to add, and
        grouped key/value heads are not copied out per query head).
        """
        backbone = self.model.model
        if mask is None:
            attention = {"attention_mask": None, "is_causal": False}
        else:
            attention = {"attention_mask": mask}
        hidden = backbone.embed_tokens(input_ids)
        rope = cache.memo(
            "rope",
            (position_ids.clone(), hidden.dtype),
            lambda: backbone.rotary_emb(hidden, position_ids),
        )
        for layer in backbone.layers[: backbone.config.num_hidden_layers]:
            hidden = layer(
                hidden,
                **attention,
                position_ids=position_ids,
                position_embeddings=rope,
                use_cache=True,
                **{_CACHE_KWARG: cache},
            )
        return backbone.norm(hidden)

    def _head(self, hidden: Tensor) -> Tensor:
        return self.model.lm_head(hidden)

    def forward_train(
        self,
        xt: Tensor,
        x0: Tensor,
        logits_at: Tensor,
        block_size: int,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Training forward on ``[xt ; x0]``; LM head only at the selected noisy positions.

        Args:
            xt: Long[B, L] noisy ids.
            x0: Long[B, L] clean ids.
            logits_at: Bool[B, L] positions of the noisy half whose logits are wanted.
            block_size: ``Bk``.
            attention_mask: Bool[B, L] real tokens, or None. Padding starts on a block
                boundary (docs/method.md §3.4), so it only changes padding rows; it is
                applied anyway for safety.

        Returns:
            Float[N, V] logits in ``xt[logits_at]`` order (N = ``logits_at.sum()``).
        """
        batch, length = xt.shape
        ids = torch.cat([xt, x0], dim=1)
        pos = torch.arange(length, device=xt.device).repeat(2)[None].expand(batch, -1)
        if self.model.config._attn_implementation == "flex_attention":
            mask = masks.bd3lm_flex_block_mask(attention_mask, length, block_size, False, batch)
        else:
            mask = masks.bd3lm_batch_mask(
                attention_mask, length, block_size, batch_size=batch, device=xt.device
            )
        hidden = self._hidden(ids, pos, mask)
        return self._head(hidden[:, :length][logits_at])

    forward = forward_train

    def bidirectional_logits(
        self, input_ids: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Plain fully bidirectional forward (reference computations, masked-diffusion use).

        Args:
            input_ids: Long[B, L].
            attention_mask: Bool[B, L] or None.

        Returns:
            Float[B, L, V].
        """
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask
        )
        mask = masks.to_additive(masks.bidirectional_batch_mask(valid), self._dtype())
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None].expand_as(input_ids)
        return self._head(self._hidden(input_ids, pos, mask))

    def _dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def _head_at(self, hidden: Tensor, logits_at: Tensor | None) -> Tensor:
        """LM head on all of ``hidden`` (Float[B, Q, H]) or only on its ``logits_at`` rows."""
        return self._head(hidden if logits_at is None else hidden[logits_at])

    def prefill(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        block_size: int,
        capacity: int | None = None,
    ) -> BlockCache:
        """Encode a clean, left-padded prefix block-causally and cache its keys/values.

        Args:
            input_ids: Long[B, P], ``P`` a multiple of ``block_size`` (left padding).
            position_ids: Long[B, P] counting real tokens only
                (:func:`tide_lightning.models.masks.position_ids_from_mask`).
            attention_mask: Bool[B, P] real tokens.
            block_size: ``Bk``.
            capacity: positions to preallocate (default ``P``; ``P + max_new_tokens``
                avoids regrowing the buffers while decoding).

        Returns:
            A new :class:`BlockCache` with ``P`` committed keys/values per layer.
        """
        batch, length = input_ids.shape
        cache = BlockCache.empty(batch, input_ids.device, max(length, capacity or 0))
        return self.extend_cache(cache, input_ids, position_ids, attention_mask, block_size)

    def _noisy_block_mask(self, cache: BlockCache, query_len: int) -> Tensor | None:
        """Additive Float[B, 1, Q, P + Q] for a fully real noisy block over the cache.

        Built once per cache state. None when the cache holds no padding: the noisy
        block then sees every key and attention needs no mask.
        """

        def build() -> Tensor | None:
            if bool(cache.key_valid.all()):
                return None
            new = torch.ones(
                cache.batch_size, query_len, dtype=torch.bool, device=cache.key_valid.device
            )
            keys = torch.cat([cache.key_valid, new], dim=1)
            mask = masks.appended_block_mask(keys, query_len, 1, bidirectional_query=True)
            return masks.to_additive(mask, self._dtype())

        return cache.memo("noisy_mask", (query_len, self._dtype()), build)

    def forward_block(
        self,
        cache: BlockCache,
        block_ids: Tensor,
        position_ids: Tensor,
        key_padding: Tensor | None = None,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """Logits of one (partly masked) block attending the cache; nothing is committed.

        The block's keys/values go to the cache's scratch slots only (see
        :mod:`tide_lightning.models.kv_cache`): ``cache.length`` and the committed
        keys/values are the same afterwards.

        Args:
            cache: prefix keys/values.
            block_ids: Long[B, Q], ``Q <= Bk``.
            position_ids: Long[B, Q].
            key_padding: Bool[B, Q] real tokens of the block, or None (all real; the
                attention mask is then built once per cache state and reused).
            logits_at: Bool[B, Q] positions whose logits are wanted, or None (all).

        Returns:
            Float[B, Q, V], or Float[N, V] in ``block_ids[logits_at]`` order.
        """
        if key_padding is None:
            mask = self._noisy_block_mask(cache, block_ids.shape[1])
        else:
            keys = torch.cat([cache.key_valid, key_padding.bool()], dim=1)
            mask = masks.appended_block_mask(keys, block_ids.shape[1], 1, bidirectional_query=True)
            mask = masks.to_additive(mask, self._dtype())
        hidden = self._decode_hidden(block_ids, position_ids, mask, cache)
        return self._head_at(hidden, logits_at)

    def extend_cache(
        self,
        cache: BlockCache,
        block_ids: Tensor,
        position_ids: Tensor,
        key_padding: Tensor | None = None,
        block_size: int | None = None,
    ) -> BlockCache:
        """Append committed clean tokens to the cache in place (clean-half rule: block-causal).

        Args:
            cache: prefix keys/values; ``Q`` positions are committed to it.
            block_ids: Long[B, Q] committed ids, ``Q`` a multiple of ``block_size``.
            position_ids: Long[B, Q].
            key_padding: Bool[B, Q] real tokens, or None.
            block_size: ``Bk``; defaults to ``Q`` (one block).

        Returns:
            ``cache`` itself, now ``Q`` positions longer.
        """
        if block_ids.shape[1] == 0:
            return cache
        valid = torch.ones_like(block_ids, dtype=torch.bool) if key_padding is None else key_padding
        keys = torch.cat([cache.key_valid, valid.bool()], dim=1)
        size = block_ids.shape[1] if block_size is None else block_size
        mask = masks.appended_block_mask(keys, block_ids.shape[1], size, bidirectional_query=False)
        self._decode_hidden(block_ids, position_ids, masks.to_additive(mask, self._dtype()), cache)
        cache.commit(block_ids.shape[1], valid)
        return cache

    def extend_and_forward_block(
        self,
        cache: BlockCache,
        clean_ids: Tensor,
        clean_positions: Tensor,
        block_ids: Tensor,
        block_positions: Tensor,
        block_size: int,
        clean_padding: Tensor | None = None,
        logits_at: Tensor | None = None,
    ) -> Tensor:
        """:meth:`extend_cache` with ``clean_ids`` and :meth:`forward_block` after it, in one forward.

        The forward runs ``[clean ; block]``: the clean tokens block-causally over the
        cache (they never see the noisy block), the noisy block bidirectionally within
        itself over the cache and every clean token. The clean tokens are committed.

        Args:
            cache: prefix keys/values, ``P`` committed; the new tokens start a block.
            clean_ids: Long[B, Q_c] ids to commit, ``Q_c`` a multiple of ``block_size``
                (may be 0).
            clean_positions: Long[B, Q_c].
            block_ids: Long[B, Q] the noisy block, ``Q <= block_size``.
            block_positions: Long[B, Q].
            block_size: ``Bk``.
            clean_padding: Bool[B, Q_c] real clean tokens, or None (all real).
            logits_at: Bool[B, Q] block positions whose logits are wanted, or None (all).

        Returns:
            The noisy block's logits as :meth:`forward_block` returns them.
        """
        clean = clean_ids.shape[1]
        if clean % block_size or block_ids.shape[1] > block_size:
            raise ValueError(
                f"clean tokens ({clean}) must be a multiple of the block size {block_size} "
                f"and the noisy block ({block_ids.shape[1]}) at most one block"
            )
        if clean_padding is None:
            clean_padding = torch.ones_like(clean_ids, dtype=torch.bool)
        noisy = torch.ones_like(block_ids, dtype=torch.bool)
        keys = torch.cat([cache.key_valid, clean_padding.bool(), noisy], dim=1)
        total = clean + block_ids.shape[1]
        mask = masks.appended_block_mask(keys, total, block_size, bidirectional_query=False)
        hidden = self._decode_hidden(
            torch.cat([clean_ids, block_ids], dim=1),
            torch.cat([clean_positions, block_positions], dim=1),
            masks.to_additive(mask, self._dtype()),
            cache,
        )
        cache.commit(clean, clean_padding)
        return self._head_at(hidden[:, clean:], logits_at)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each decoder layer in backward (trades compute for activation memory)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # older transformers
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self) -> None:
        disable = getattr(self.model, "activation_checkpointing_disable", None)
        (disable or self.model.gradient_checkpointing_disable)()

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Write an HF directory (``model_type: a2d-qwen3``) that :func:`load_student` reads."""
        self.model.save_pretrained(str(directory))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))


def build_student(
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    mask_token_id: int,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    tie_word_embeddings: bool = True,
    dtype: torch.dtype = torch.float32,
    attention: str = "sdpa",
    seed: int | None = None,
) -> BD3LMStudent:
    """Build a randomly initialised student from explicit sizes (tests, demo).

    Args:
        vocab_size: embedding rows (must exceed ``mask_token_id``).
        hidden_size: model width.
        num_layers: decoder layers.
        num_heads: query heads.
        mask_token_id: id of ``<|mask|>``.
        num_kv_heads: key/value heads (default ``num_heads``).
        head_dim: per-head width (default ``hidden_size // num_heads``).
        intermediate_size: MLP width (default ``4 * hidden_size``).
        max_position_embeddings: RoPE range recorded in the config.
        tie_word_embeddings: share input embedding and LM head (as Qwen3-0.6B does).
        dtype: parameter dtype.
        attention: ``"sdpa" | "flex" | "auto"``.
        seed: optional seed for reproducible weights.

    Returns:
        :class:`BD3LMStudent` in train mode.
    """
    config = A2DQwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        head_dim=head_dim or hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        mask_token_id=mask_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = A2DQwen3Model(config).to(dtype)
    model.set_attn_implementation(resolve_attention(attention))
    return BD3LMStudent(model, mask_token_id)


def _read_model_type(path: Path) -> str:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"student directory {str(path)!r} has no config.json")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in STUDENT_MODEL_TYPES:
        raise ValueError(
            f"student model_type {model_type!r} in {str(path)!r} is not one of {STUDENT_MODEL_TYPES}"
        )
    return model_type


def check_student_vocab(mask_token_id: int | None, embedding_rows: int, tokenizer_len: int) -> None:
    """Fail with the offending value when the tokenizer and the embedding disagree."""
    if mask_token_id is None:
        raise ValueError(f"the tokenizer has no {MASK_TOKEN} token (add it before training)")
    if not 0 <= mask_token_id < embedding_rows:
        raise ValueError(
            f"mask token id {mask_token_id} is outside the {embedding_rows} embedding rows"
        )
    if embedding_rows < tokenizer_len:
        raise ValueError(
            f"embedding rows {embedding_rows} < tokenizer length {tokenizer_len}: "
            "the checkpoint does not match this tokenizer"
        )


def load_student(
    path: str | Path, dtype: torch.dtype | None = None, attention: str = "auto"
) -> tuple[BD3LMStudent, object]:
    """Load a BD3LM student and its tokenizer from a local directory; nothing downloads.

    Args:
        path: directory with ``config.json`` (``model_type`` "a2d-qwen3" or "qwen3"),
            weights and a tokenizer containing ``<|mask|>``.
        dtype: parameter dtype; default bf16 on CUDA, float32 on CPU.
        attention: ``"auto" | "sdpa" | "flex"``.

    Returns:
        ``(student, tokenizer)``.

    Raises:
        FileNotFoundError, ValueError: missing directory, wrong model type, missing mask
            token, mask id outside the embedding, fewer embedding rows than tokens, or
            weights missing from the checkpoint; the message names the value.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"student directory {str(path)!r} does not exist")
    _read_model_type(path)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False
    )
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if mask_id is None or mask_id == tokenizer.unk_token_id:
        mask_id = None
    config = A2DQwen3Config.from_pretrained(str(path), local_files_only=True)
    stored = getattr(config, "mask_token_id", None)
    if stored is not None and mask_id is not None and stored != mask_id:
        raise ValueError(f"config mask_token_id {stored} != tokenizer {MASK_TOKEN} id {mask_id}")
    check_student_vocab(mask_id, config.vocab_size, len(tokenizer))
    model, info = A2DQwen3Model.from_pretrained(
        str(path),
        config=config,
        dtype=dtype,
        attn_implementation=resolve_attention(attention),
        local_files_only=True,
        output_loading_info=True,
    )
    missing = [k for k in info["missing_keys"] if not k.startswith("lm_head")]
    if missing or ("lm_head.weight" in info["missing_keys"] and not config.tie_word_embeddings):
        raise ValueError(f"student checkpoint {str(path)!r} lacks weights: {missing[:5]}")
    return BD3LMStudent(model, mask_id), tokenizer
