"""The registry of training variants (docs/method.md §12).

One dict serves both config validation and dispatch, so the set of names a config
may use and the set of losses the code implements cannot drift apart. Every
distillation loss is called the same way:
``loss(student, teacher, lam=..., weight=..., temperature=...)`` where ``student``
and ``teacher`` are token logits ``[N, V]`` (level "token") or chunk log-probs
``[C]`` (level "chunk"); losses that ignore ``lam`` or ``weight`` say so by not
using the TIDAL schedule.

Composite variants (the published ``taid+kl``) are token-level terms joined by ``+``:
their loss is the sum of the terms' losses on the same positions (one student pass,
one teacher pass). ``tide_shared+kl`` is registered; any other ``a+b`` of token-level
variants is built on demand by :func:`get_variant`, from the same registry. Chunk-level
terms do not compose (as in the published trainer, whose ALM modes refuse ``+``).
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
    reverse_chunk_tidal_loss,
    reverse_kl_loss,
    tidal_loss,
)

PIPELINES = ("shared", "cross")

PIPELINE_DEFAULTS: dict[str, dict[str, object]] = {
    # The published scripts: distill_wedlm.sh sets KL_TEMPERATURE=2.0 and
    # TAID_TIMESTEP_WEIGHT=midrange; distill_llada2.sh sets ALM_TEMPERATURE=5.0 and leaves
    # the time weight at the trainer's default, uniform.
    "shared": {"temperature": 2.0, "time_weight": "midrange"},
    "cross": {"temperature": 5.0, "time_weight": "uniform"},
}
"""Objective settings whose published value depends on the pipeline (config ``None``)."""

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
    terms: tuple[str, ...] = ()
    """The registered variants a composite adds up, ``()`` for a single term."""

    @property
    def needs_teacher(self) -> bool:
        return self.loss is not None

    def term_losses(
        self,
        student: Tensor,
        teacher: Tensor,
        *,
        lam: Tensor,
        weight: Tensor | None,
        temperature: float,
    ) -> dict[str, Tensor]:
        """Each term's loss by name (one entry, the variant's own, unless a composite).

        The composite's loss is their sum; the objective adds them itself so that every
        term can be logged without computing it twice.
        """
        kw = {"lam": lam, "weight": weight, "temperature": temperature}
        if not self.terms:
            return {self.name: self.loss(student, teacher, **kw)}
        return {name: VARIANTS[name].loss(student, teacher, **kw) for name in self.terms}


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


def _reverse_chunk_tidal(
    student: Tensor, teacher: Tensor, *, lam, weight, temperature: float
) -> Tensor:
    return reverse_chunk_tidal_loss(student, teacher, lam, temperature, weight)


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
        Variant(
            "reverse_tide_shared_chunk",
            ("cross",),
            "chunk",
            _reverse_chunk_tidal,
            uses_tidal=True,
            compdemo=True,
            description="L_CE + reverse chunk-space TIDAL + CompDemo (published reverse_alm_taid)",
        ),
        # TIDE-Cross (B) of the paper's table: the reverse objective on the WeDLM teacher.
        # Its positions are those of the shared step (the aligned assistant-content
        # positions when the aligned shared pipeline is on), as for every token variant.
        Variant(
            "tide_cross_shared",
            ("shared",),
            "token",
            _reverse_kl,
            description="L_CE + reverse KL, TIDE-Cross (B) (published reverse_kl_aligned)",
        ),
    )
}


def _composite(name: str) -> Variant:
    """The variant ``a+b+...``: token-level terms whose losses are added."""
    parts = tuple(p.strip() for p in name.split("+"))
    if len(parts) < 2 or len(set(parts)) != len(parts):
        raise ValueError(f"composite variant {name!r} needs two or more distinct terms")
    terms = []
    for part in parts:
        if part not in VARIANTS:
            raise ValueError(f"unknown term {part!r} in composite variant {name!r}")
        term = VARIANTS[part]
        if term.level != "token" or term.terms:
            raise ValueError(
                f"composite variant {name!r}: term {part!r} is not a single token-level "
                "loss (chunk losses and ce do not compose)"
            )
        terms.append(term)
    pipelines = tuple(p for p in PIPELINES if all(p in t.pipelines for t in terms))
    losses = tuple(t.loss for t in terms)

    def loss(student: Tensor, teacher: Tensor, *, lam, weight, temperature: float) -> Tensor:
        total = losses[0](student, teacher, lam=lam, weight=weight, temperature=temperature)
        for term_loss in losses[1:]:
            total = total + term_loss(
                student, teacher, lam=lam, weight=weight, temperature=temperature
            )
        return total

    return Variant(
        name,
        pipelines,
        "token",
        loss,
        uses_tidal=any(t.uses_tidal for t in terms),
        compdemo=any(t.compdemo for t in terms),
        description=" + ".join(t.description.removeprefix("L_CE + ") for t in terms),
        terms=parts,
    )


# The published composite ``taid+kl``: TIDAL (with CompDemo) plus forward KL.
VARIANTS["tide_shared+kl"] = _composite("tide_shared+kl")


def get_variant(name: str, pipeline: str | None = None) -> Variant:
    """Look a variant up, failing with the accepted names (and pipeline) when it is wrong.

    A name ``a+b`` that is not registered is built from registered token-level terms.
    """
    if name in VARIANTS:
        variant = VARIANTS[name]
    elif "+" in name:
        variant = _composite(name)
    else:
        raise ValueError(
            f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}, "
            "or token-level terms joined by '+'"
        )
    if pipeline is not None and pipeline not in variant.pipelines:
        raise ValueError(
            f"variant {name!r} runs in the {'/'.join(variant.pipelines)} pipeline, not {pipeline!r}"
        )
    return variant
