"""TIDE distillation of diffusion language models on PyTorch Lightning.

The method's math is importable from the top level as pure functions::

    from tide_lightning import tidal_loss, tidal_lambda, sample_mask

Names are resolved lazily (PEP 562), so ``import tide_lightning`` (and the CLI's
``--help``) does not import torch; the first use of a name imports its module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "tide_lightning.method.alignment": ("ChunkAlignment", "align_messages", "align_texts"),
    "tide_lightning.models.masks": ("bd3lm_attention_mask",),
    "tide_lightning.method.losses": (
        "calm_loss",
        "chunk_log_probs",
        "chunk_tidal_loss",
        "forward_kl_loss",
        "gold_log_probs",
        "masked_diffusion_ce",
        "reverse_calm_loss",
        "reverse_kl_loss",
        "tidal_loss",
    ),
    "tide_lightning.method.masking": (
        "chunk_consistent_mask",
        "complementary_chunk_split",
        "complementary_inputs",
        "complementary_split",
        "merge_complementary",
        "sample_mask",
        "sample_time",
    ),
    "tide_lightning.evaluation.sandbox": ("ProgramResult", "check_program"),
    "tide_lightning.method.schedules": ("lambda_train", "midrange_weight", "tidal_lambda"),
    "tide_lightning.method.variants": ("VARIANTS", "Variant", "get_variant"),
    "tide_lightning.models.frozen": ("load_teacher",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tide_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from tide_lightning.evaluation.sandbox import ProgramResult, check_program
    from tide_lightning.method.alignment import ChunkAlignment, align_messages, align_texts
    from tide_lightning.method.losses import (
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
    from tide_lightning.method.masking import (
        chunk_consistent_mask,
        complementary_chunk_split,
        complementary_inputs,
        complementary_split,
        merge_complementary,
        sample_mask,
        sample_time,
    )
    from tide_lightning.method.schedules import lambda_train, midrange_weight, tidal_lambda
    from tide_lightning.method.variants import VARIANTS, Variant, get_variant
    from tide_lightning.models.frozen import load_teacher
    from tide_lightning.models.masks import bd3lm_attention_mask
