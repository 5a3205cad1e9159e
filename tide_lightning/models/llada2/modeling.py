"""LLaDA2-MoE for transformers 5: the hub checkpoint's modules, our own code.

The hub ships LLaDA2.0-mini with remote code written for transformers 4.57, which does
not import under 5.x and, once shimmed, leaves the rotary table uninitialised after
``from_pretrained``. This module is a from-scratch implementation of the same
architecture with the same parameter and buffer names, so the hub ``safetensors`` load
with strict key matching and no remote code runs.

Architecture (per decoder layer, pre-norm residual):

- attention: one fused ``query_key_value`` projection, grouped-query heads, RMSNorm on
  each query/key head, rotary embedding on the first ``head_dim * partial_rotary_factor``
  dimensions of each head (rotate-half form), output projection ``dense``. It is
  bidirectional: a masked-diffusion model sees its whole sequence.
- MLP: dense SwiGLU in the first ``first_k_dense_replace`` layers, else a sparse MoE
  block: a sigmoid router picks ``num_experts_per_tok`` experts from the
  ``topk_group`` best of ``n_group`` groups (routing on score + ``expert_bias``,
  weighting on the plain score, renormalised and scaled by ``routed_scaling_factor``),
  plus the shared experts every token passes through.

Attention runs only through PyTorch SDPA. The masks of :mod:`tide_lightning.models.masks`
are accepted as they are (boolean ``True`` = attend, or additive float); eager and
FlashAttention back-ends are refused because they would misread them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from tide_lightning.errors import UserError
from tide_lightning.models import masks
from tide_lightning.models.llada2.configuration import LLaDA2MoeConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled in the input dtype (as the checkpoint was trained)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryTable(nn.Module):
    """Inverse frequencies of the partial rotary embedding (non-persistent buffer ``inv_freq``).

    The buffer is not in the checkpoint, so it is computed here and recomputed by
    :meth:`reset` after every load (transformers 5 materialises non-persistent buffers
    from the meta device as uninitialised memory).
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.width = config.rotary_width
        self.base = config.rotary_base
        self.register_buffer("inv_freq", self.frequencies(), persistent=False)

    def frequencies(self, device=None) -> Tensor:
        """Float[width / 2]: ``base ** (-2i / width)``."""
        exponent = torch.arange(0, self.width, 2, device=device).float() / self.width
        return 1.0 / (self.base**exponent)

    @torch.no_grad()
    def reset(self) -> None:
        self.inv_freq.copy_(self.frequencies(self.inv_freq.device))

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Cos and sin tables, Float[B, L, width] each, in ``dtype``.

        Computed in float32 (positions up to 16k lose digits in bf16), then cast to the
        activations' dtype like the queries they multiply.
        """
        angles = position_ids.float()[..., None] * self.inv_freq.float()
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of each head (x: [B, H, L, D]; cos, sin: [B, L, R])."""
    width = cos.shape[-1]
    rot, rest = x[..., :width], x[..., width:]
    first, second = rot.chunk(2, dim=-1)
    cos, sin = cos[:, None], sin[:, None]
    rotated = rot * cos + torch.cat([-second, first], dim=-1) * sin
    return torch.cat([rotated, rest], dim=-1)


class GatedMLP(nn.Module):
    """SwiGLU MLP (``down(act(gate(x)) * up(x))``): the dense layers, each expert, the shared experts."""

    def __init__(self, config: LLaDA2MoeConfig, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class GroupedSigmoidRouter(nn.Module):
    """Group-limited top-k routing on sigmoid scores with a load-balancing bias.

    The bias (buffer ``expert_bias``, in the checkpoint) only moves which experts are
    chosen; the weights come from the unbiased scores. Everything runs in float32.
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.top_k = config.num_experts_per_tok
        self.scale = config.routed_scaling_factor

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Route tokens.

        Args:
            x: Float[T, H] hidden states.

        Returns:
            Long[T, k] chosen experts (best first) and Float32[T, k] their weights.
        """
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        biased = scores + self.expert_bias.float()
        tokens, experts = biased.shape
        # A group is as good as its best two experts; only the best groups compete.
        grouped = biased.view(tokens, self.n_group, experts // self.n_group)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)
        best_groups = group_score.topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best_groups, True)
        keep = keep.repeat_interleave(experts // self.n_group, dim=1)
        eligible = biased.masked_fill(~keep, -torch.inf)
        chosen = eligible.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, weights * self.scale


class SparseMoeBlock(nn.Module):
    """Routed experts plus shared experts.

    Only the experts some token chose run. Under ZeRO-3 that makes the set of gathered
    parameters depend on the tokens, so the block must be a ZeRO-3 leaf module (gathered
    whole on entry): see :func:`tide_lightning.models.sharding.mark_zero3_leaves`.
    """

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.experts = nn.ModuleList(
            GatedMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        self.gate = GroupedSigmoidRouter(config)
        self.shared_experts = (
            None
            if config.num_shared_experts is None
            else GatedMLP(config, config.moe_intermediate_size * config.num_shared_experts)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Float[B, L, H] -> Float[B, L, H]."""
        flat = x.reshape(-1, x.shape[-1])
        chosen, weights = self.gate(flat)
        # Accumulate the weighted expert outputs in float32, as the router weights are.
        out = torch.zeros(flat.shape, dtype=torch.float32, device=x.device)
        for e in chosen.unique().tolist():
            token, slot = (chosen == e).nonzero(as_tuple=True)
            y = self.experts[e](flat[token]).float() * weights[token, slot, None]
            out.index_add_(0, token, y)
        out = out.to(x.dtype).view_as(x)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out


class Attention(nn.Module):
    """Bidirectional grouped-query attention with QK norm and partial rotary, via SDPA."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        width = (self.heads + 2 * self.kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = config.use_qk_norm
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        """Args: x Float[B, L, H]; cos, sin Float[B, L, R]; mask Bool/Float[B, 1|heads, L, L] or None."""
        batch, length, _ = x.shape
        qkv = self.query_key_value(x).view(batch, length, -1, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        if self.qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,
        )  # fmt: skip
        return self.dense(out.transpose(1, 2).reshape(batch, length, -1))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention, then the dense or sparse MLP."""

    def __init__(self, config: LLaDA2MoeConfig, index: int):
        super().__init__()
        self.attention = Attention(config)
        sparse = config.num_experts is not None and index >= config.first_k_dense_replace
        self.mlp = SparseMoeBlock(config) if sparse else GatedMLP(config, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def _sdpa_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The mask SDPA gets, from any form callers pass.

    Args:
        attention_mask: None (attend everywhere); Long/Bool[B, L] real tokens (padding
            keys removed, bidirectional over the rest); Bool[B, 1|heads, L, L]
            (``True`` = attend); or an additive float mask of that shape.
        dtype: the activations' dtype (an additive mask is cast to it).

    A 2-D mask means bidirectional attention over the real tokens, what a masked-diffusion
    model needs (the remote code would build a causal mask from it instead; every caller
    there passes 4-D masks).

    Raises:
        UserError: a mask of another rank, or a boolean one with a fully masked row
            (SDPA returns NaN there and the NaN spreads to every later query).
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return masks.bidirectional_batch_mask(attention_mask.bool())
    if attention_mask.dim() != 4:
        raise UserError(
            f"llada2_moe attention_mask must be [B, L] or [B, 1, L, L], got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype == torch.bool:
        if not attention_mask.any(-1).all():
            raise UserError("llada2_moe attention_mask has a query row that attends to nothing")
        return attention_mask
    return attention_mask.to(dtype)


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    """Weight init, the SDPA-only rule and strict loading shared by both model classes."""

    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    # Run only for the experts chosen: ZeRO-3 must gather them whole (sharding.mark_zero3_leaves).
    zero3_leaf_classes = (SparseMoeBlock,)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, GroupedSigmoidRouter):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.expert_bias)
        elif isinstance(module, RotaryTable):
            init.copy_(module.inv_freq, module.frequencies(module.inv_freq.device))

    def check_attention_backend(self) -> None:
        """Refuse anything but SDPA (eager would add a boolean mask as 0/1; flash ignores 4-D masks)."""
        impl = self.config._attn_implementation
        if impl not in (None, "sdpa"):
            raise UserError(
                f"llada2_moe runs attention through SDPA only, not {impl!r} "
                "(load it with attn_implementation='sdpa' or leave it unset)"
            )

    def reset_rotary(self) -> None:
        """Recompute every rotary table (non-persistent, so never in a checkpoint)."""
        for module in self.modules():
            if isinstance(module, RotaryTable):
                module.reset()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader, made strict: any missing, unexpected or mis-shaped key fails.

        The rotary table is recomputed after the weights are in (also under ZeRO-3).

        Raises:
            UserError: the checkpoint's keys do not match this architecture (all named).
        """
        want_info = kwargs.pop("output_loading_info", False)
        # Mis-shaped keys are let through transformers' own check so that they are
        # reported below together with the missing and unexpected ones.
        kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        problems = [
            f"{what.replace('_', ' ')}: {', '.join(sorted(map(str, info[what]))[:8])}"
            for what in ("missing_keys", "unexpected_keys", "mismatched_keys")
            if info.get(what)
        ]
        if problems:
            raise UserError(
                f"llada2_moe checkpoint {str(Path(pretrained_model_name_or_path))!r} does not match "
                f"the architecture ({'; '.join(problems)})"
            )
        model.reset_rotary()
        _reload_buffers(model, Path(pretrained_model_name_or_path))
        return (model, info) if want_info else model


def _reload_buffers(model: nn.Module, directory: Path) -> None:
    """Copy every persistent buffer (the routers' ``expert_bias``) from the checkpoint again.

    Buffers are never partitioned by ZeRO-3, so each rank needs the real values; under
    transformers 4.57 a ZeRO-3 load left them at their initial zeros on all ranks but
    the first (routing then differs between ranks). Reading them again is cheap (one
    small tensor per layer) and makes that independent of the loader.
    """
    from safetensors import safe_open

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        file_of = {key: directory / name for key, name in weight_map.items()}
    elif (directory / "model.safetensors").is_file():
        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            file_of = dict.fromkeys(f.keys(), directory / "model.safetensors")
    else:
        return  # not a safetensors directory: nothing to re-read
    saved = set(model.state_dict())
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name not in saved:
                continue  # non-persistent (rotary): recomputed, not stored
            # A bare decoder (AutoModel) loads keys stored under the LM's "model." prefix.
            key = name if name in file_of else f"{model.base_model_prefix}.{name}"
            with safe_open(str(file_of[key]), framework="pt") as f:
                buffer.copy_(f.get_tensor(key))


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """The decoder: embeddings, layers, final norm; returns the last hidden states."""

    # Loaded on its own from an LM checkpoint, the head is the one key it does not use.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, config.pad_token_id
        )
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryTable(config)
        self.post_init()
        self.check_attention_backend()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        """Hidden states of a whole sequence.

        Args:
            input_ids: Long[B, L] (or ``inputs_embeds`` Float[B, L, H]).
            attention_mask: see :func:`_sdpa_mask`; None attends everywhere.
            position_ids: Long[B, L]; default ``0..L-1``.
            use_cache: must not be True (there is no cache).

        Returns:
            ``BaseModelOutput`` with ``last_hidden_state`` Float[B, L, H].
        """
        self.check_attention_backend()
        if use_cache:
            raise UserError("llada2_moe keeps no KV cache; call it with use_cache=False")
        # Options transformers' models take (output_attentions, past_key_values, ...) are
        # not implemented: refuse them rather than return something else.
        asked = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if asked:
            raise UserError(f"llada2_moe forward does not support {', '.join(asked)}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = x.shape[:2]
        if length > self.config.max_position_embeddings:
            raise UserError(
                f"llada2_moe sequence of {length} tokens exceeds max_position_embeddings="
                f"{self.config.max_position_embeddings}"
            )
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device)[None].expand(batch, -1)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        mask = _sdpa_mask(attention_mask, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        out = BaseModelOutput(last_hidden_state=self.norm(x))
        return out.to_tuple() if return_dict is False else out


class LLaDA2MoeForCausalLM(LLaDA2MoePreTrainedModel):
    """Decoder plus LM head (``lm_head``); the hub's ``LLaDA2MoeModelLM``.

    Despite the Auto class it is registered under, the model is a masked-diffusion
    denoiser: logits at every position, from bidirectional attention.
    """

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_decoder(self) -> LLaDA2MoeModel:
        return self.model

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        """Float32 logits at every position (``logits`` Float[B, L, V]), as the reference returns them.

        Arguments as :meth:`LLaDA2MoeModel.forward`; there is no loss (``labels`` is refused).
        """
        hidden = self.model(
            input_ids, attention_mask, position_ids, inputs_embeds, use_cache, **kwargs
        ).last_hidden_state
        out = MaskedLMOutput(logits=self.lm_head(hidden).float())
        return out.to_tuple() if return_dict is False else out
