"""TIDE distillation of diffusion language models on PyTorch Lightning.

The method's math is importable from the top level as pure functions::

    from tide_lightning import tidal_loss, tidal_lambda, sample_mask
"""

from tide_lightning.alignment import ChunkAlignment, align_messages, align_texts
from tide_lightning.attention import bd3lm_attention_mask
from tide_lightning.losses import (
    calm_loss,
    chunk_log_probs,
    chunk_tidal_loss,
    forward_kl_loss,
    gold_log_probs,
    masked_diffusion_ce,
    reverse_calm_loss,
    reverse_kl_loss,
    tidal_loss,
)
from tide_lightning.masking import (
    chunk_consistent_mask,
    complementary_chunk_split,
    complementary_inputs,
    complementary_split,
    merge_complementary,
    sample_mask,
    sample_time,
)
from tide_lightning.sandbox import ProgramResult, check_program
from tide_lightning.schedules import lambda_train, midrange_weight, tidal_lambda
from tide_lightning.variants import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "ChunkAlignment",
    "ProgramResult",
    "VARIANTS",
    "Variant",
    "align_messages",
    "align_texts",
    "bd3lm_attention_mask",
    "calm_loss",
    "check_program",
    "chunk_consistent_mask",
    "chunk_log_probs",
    "chunk_tidal_loss",
    "complementary_chunk_split",
    "complementary_inputs",
    "complementary_split",
    "forward_kl_loss",
    "get_variant",
    "gold_log_probs",
    "lambda_train",
    "masked_diffusion_ce",
    "merge_complementary",
    "midrange_weight",
    "reverse_calm_loss",
    "reverse_kl_loss",
    "sample_mask",
    "sample_time",
    "tidal_lambda",
    "tidal_loss",
]
