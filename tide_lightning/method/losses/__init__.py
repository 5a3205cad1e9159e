"""TIDE's losses as pure functions of tensors (no Lightning, no config)."""

from tide_lightning.method.losses.chunk_losses import (
    calm_from_probs,
    calm_loss,
    chunk_log_probs,
    chunk_probs,
    chunk_tidal_loss,
    reverse_calm_from_probs,
    reverse_calm_loss,
    reverse_chunk_tidal_loss,
)
from tide_lightning.method.losses.rowwise import gold_log_probs
from tide_lightning.method.losses.token_losses import (
    forward_kl_loss,
    kl_per_position,
    masked_diffusion_ce,
    reverse_kl_loss,
    tidal_loss,
)

__all__ = [
    "calm_from_probs",
    "calm_loss",
    "chunk_log_probs",
    "chunk_probs",
    "chunk_tidal_loss",
    "forward_kl_loss",
    "gold_log_probs",
    "kl_per_position",
    "masked_diffusion_ce",
    "reverse_calm_from_probs",
    "reverse_calm_loss",
    "reverse_chunk_tidal_loss",
    "reverse_kl_loss",
    "tidal_loss",
]
