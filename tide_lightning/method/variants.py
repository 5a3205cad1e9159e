"""The registry of training variants (SPEC section 8).

One dict serves both config validation and dispatch, so the set of names a config
may use and the set of losses the code implements cannot drift apart. Every
distillation loss is called the same way:
``loss(student, teacher, lam=..., weight=..., temperature=...)`` where ``student``
and ``teacher`` are token logits ``[N, V]`` (level "token") or chunk log-probs
``[C]`` (level "chunk"); losses that ignore ``lam`` or ``weight`` say so by not
using the TIDAL schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from tide_lightning.method.losses import (
    calm_loss,
    chunk_tidal_loss,
    forward_kl_loss,
    reverse_calm_loss,
    reverse_kl_loss,
    tidal_loss,
)

PIPELINES = ("shared", "cross")

DistillLoss = Callable[..., Tensor]


@dataclass(frozen=True)
class Variant:
    """What a variant name means."""

    name: str
    pipelines: tuple[str, ...]
    """Pipelines the variant runs in."""
    level: str | None
    """"token", "chunk", or None for CE only."""
    loss: DistillLoss | None
    """The distillation term, ``None`` for the CE-only baseline."""
    uses_tidal: bool = False
    """Whether ``lam`` and ``weight`` (the TIDAL schedule) feed the loss."""
    compdemo: bool = False
    """CompDemo's default for the variant (a config switch overrides it)."""
    description: str = ""

    @property
    def needs_teacher(self) -> bool:
        return self.loss is not None


def _forward_kl(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
    return forward_kl_loss(student, teacher, temperature)


def _reverse_kl(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
    return reverse_kl_loss(student, teacher, temperature)


def _tidal(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
    return tidal_loss(student, teacher, lam, temperature, weight)


def _calm(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
    return calm_loss(student, teacher, temperature)


def _reverse_calm(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
    return reverse_calm_loss(student, teacher, temperature)


def _chunk_tidal(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
    return chunk_tidal_loss(student, teacher, lam, temperature, weight)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("ce", PIPELINES, None, None, description="L_CE only (undistilled baseline)"),
        Variant("kl", ("shared",), "token", _forward_kl, description="L_CE + forward KL"),
        Variant("reverse_kl", ("shared",), "token", _reverse_kl, description="L_CE + reverse KL"),
        Variant(
            "tide_shared",
            ("shared",),
            "token",
            _tidal,
            uses_tidal=True,
            compdemo=True,
            description="L_CE + TIDAL + CompDemo",
        ),
        Variant("calm", ("cross",), "chunk", _calm, description="L_CE + CALM"),
        Variant(
            "tide_cross", ("cross",), "chunk", _reverse_calm, description="L_CE + Reverse CALM"
        ),
        Variant(
            "tide_shared_chunk",
            ("cross",),
            "chunk",
            _chunk_tidal,
            uses_tidal=True,
            compdemo=True,
            description="L_CE + chunk-space TIDAL + CompDemo",
        ),
    )
}


def get_variant(name: str, pipeline: str | None = None) -> Variant:
    """Look a variant up, failing with the accepted names (and pipeline) when it is wrong."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    if pipeline is not None and pipeline not in variant.pipelines:
        raise ValueError(
            f"variant {name!r} runs in the {'/'.join(variant.pipelines)} pipeline, not {pipeline!r}"
        )
    return variant
