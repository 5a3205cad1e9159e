"""LLaDA2-MoE configuration: every field of the published ``config.json``, checked.

The published LLaDA2.0-mini ``config.json`` carries fields the reference code reads,
fields it ignores and fields only other trainers read. Each one is either honoured by
:mod:`.modeling` or refused here with a message naming it, so a checkpoint whose
architecture this implementation does not reproduce never loads as a silently
different model. Defaults follow the reference configuration class (a key missing from
``config.json`` means what it meant there), except where the reference default cannot
build a model (``num_key_value_heads=0``).

``rope_theta`` / ``rope_scaling`` / ``partial_rotary_factor`` are folded into
``rope_parameters`` by transformers' own standardisation; only the plain (``default``)
rotary type exists in LLaDA2.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from tide_lightning.errors import UserError

# field -> the only value this implementation (and the reference code) supports, with why.
_FIXED = {
    "use_rmsnorm": (True, "LLaDA2 layers are RMSNorm only"),
    "norm_softmax": (False, "the reference code has no normalised softmax"),
    "norm_head": (False, "the reference code applies no head normalisation"),
    "using_split_qkv_in_self_attention": (False, "the checkpoint layout has one query_key_value"),
    "moe_router_enable_expert_bias": (True, "the router always adds its expert_bias buffer"),
    "score_function": ("sigmoid", "the router scores experts with a sigmoid"),
    "router_dtype": ("fp32", "the router always runs in float32"),
    "norm_topk_prob": (True, "the reference always renormalises the chosen experts' weights"),
    "use_sliding_window": (False, "attention is full (bidirectional) over the sequence"),
    "output_router_logits": (False, "no router auxiliary loss is implemented"),
    "embedding_dropout": (0.0, "the reference code applies no embedding dropout"),
    "output_dropout": (0.0, "the reference code applies no output dropout"),
}


@strict
class LLaDA2MoeConfig(PreTrainedConfig):
    """Configuration of the LLaDA2-MoE masked-diffusion transformer (``model_type: llada2_moe``).

    Raises:
        UserError: a field with a value this implementation does not reproduce (named).
    """

    model_type = "llada2_moe"

    vocab_size: int = 30592
    hidden_size: int = 1024
    intermediate_size: int | None = None
    """Width of the dense MLP in the first ``first_k_dense_replace`` layers."""
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    """None: as many as the query heads."""
    head_dim: int | None = None
    """None: ``hidden_size // num_attention_heads``."""
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    """RMSNorm over each head of the queries and keys (the published models have it)."""
    use_bias: bool = True
    """Bias of the attention output projection ``dense``."""
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.1
    """Applied in training mode only, as in the reference; a frozen teacher never sees it."""
    initializer_range: float = 0.02
    max_position_embeddings: int = 16384
    rope_parameters: dict | None = None
    partial_rotary_factor: float = 0.5
    """Fraction of each head rotated (the first ``head_dim * factor`` dimensions)."""
    rotary_dim: int | None = None
    """Redundant with ``partial_rotary_factor``; checked for agreement when given."""
    use_cache: bool = True
    """Accepted, never used: the model runs whole sequences and keeps no cache."""
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    """Only meaningful with a sliding window, which is refused."""
    pad_token_id: int | None = 126081
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    num_experts: int | None = 16
    """None: every layer dense."""
    num_shared_experts: int | None = 0
    """Experts every token goes through (one MLP of ``num * moe_intermediate_size``); None: none."""
    num_experts_per_tok: int = 2
    n_group: int = 8
    """Expert groups; a token's experts come from its ``topk_group`` best groups."""
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    """The first this many layers use the dense MLP."""

    use_rmsnorm: bool = True
    norm_softmax: bool = False
    norm_head: bool = False
    using_split_qkv_in_self_attention: bool = False
    moe_router_enable_expert_bias: bool = True
    score_function: str = "sigmoid"
    router_dtype: str = "fp32"
    norm_topk_prob: bool = True
    use_sliding_window: bool = False
    output_router_logits: bool = False
    embedding_dropout: float = 0.0
    output_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
        if self.model_type != "llada2_moe":
            # dFactory's training layout (``llada2_moe_veomni``) fuses the experts into 3-D
            # tensors: other parameter names, another checkpoint.
            raise UserError(
                f"llada2_moe config model_type={self.model_type!r} is not the hub layout "
                "'llada2_moe' (one module per expert)"
            )
        for field, (value, why) in _FIXED.items():
            if getattr(self, field) != value:
                raise UserError(
                    f"llada2_moe config {field}={getattr(self, field)!r} is not supported "
                    f"(only {value!r}: {why})"
                )
        self._check_shapes()
        self._check_rope()
        self._check_moe()

    @property
    def rotary_base(self) -> float:
        """``rope_theta`` (transformers keeps it in ``rope_parameters``)."""
        return float(self.rope_parameters["rope_theta"])

    @property
    def rotary_width(self) -> int:
        """Dimensions of each head that are rotated."""
        return int(self.head_dim * self.partial_rotary_factor)

    def _check_shapes(self) -> None:
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise UserError(
                f"llada2_moe config hidden_act={self.hidden_act!r} is not an activation"
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise UserError(
                f"llada2_moe config num_key_value_heads={self.num_key_value_heads} must be > 0 and "
                f"divide num_attention_heads={self.num_attention_heads}"
            )
        dense_layers = self.first_k_dense_replace > 0 or self.num_experts is None
        if dense_layers and not self.intermediate_size:
            raise UserError("llada2_moe config intermediate_size is needed for the dense layers")

    def _check_rope(self) -> None:
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type != "default":
            raise UserError(
                f"llada2_moe config rope_scaling of type {rope_type!r} is not supported (only none)"
            )
        if not 0.0 < self.partial_rotary_factor <= 1.0 or self.rotary_width % 2:
            raise UserError(
                f"llada2_moe config partial_rotary_factor={self.partial_rotary_factor} must give an "
                f"even rotary width in (0, head_dim={self.head_dim}]"
            )
        if self.rotary_dim is not None and self.rotary_dim != self.rotary_width:
            raise UserError(
                f"llada2_moe config rotary_dim={self.rotary_dim} disagrees with head_dim * "
                f"partial_rotary_factor = {self.rotary_width}"
            )

    def _check_moe(self) -> None:
        if self.num_experts is None:
            return
        if self.num_shared_experts == 0:
            raise UserError(
                "llada2_moe config num_shared_experts=0 is not supported (use null for none)"
            )
        if not self.moe_intermediate_size:
            raise UserError("llada2_moe config moe_intermediate_size is needed with num_experts")
        if self.n_group <= 0 or self.num_experts % self.n_group:
            raise UserError(
                f"llada2_moe config n_group={self.n_group} must divide num_experts={self.num_experts}"
            )
        per_group = self.num_experts // self.n_group
        if per_group < 2:
            raise UserError(
                f"llada2_moe config needs >= 2 experts per group (groups are scored by their best "
                f"two), got {self.num_experts} experts in {self.n_group} groups"
            )
        if not 0 < self.topk_group <= self.n_group:
            raise UserError(
                f"llada2_moe config topk_group={self.topk_group} must be in [1, n_group={self.n_group}]"
            )
        if not 0 < self.num_experts_per_tok <= self.topk_group * per_group:
            raise UserError(
                f"llada2_moe config num_experts_per_tok={self.num_experts_per_tok} must be in "
                f"[1, {self.topk_group * per_group}] (topk_group * experts per group)"
            )
