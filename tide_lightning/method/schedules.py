"""TIDAL's dual-axis teacher-trust schedule and the time weights (docs/method.md §6).

The student trusts the teacher more as training progresses (training axis) and less
at high noise, where the teacher's own prediction is least reliable (timestep axis).
Both are plain functions of floats and tensors so they can be plotted, logged and
tested without a model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SHAPES = ("cosine", "linear")
AXES = ("both", "training_only", "timestep_only")
TIME_WEIGHTS = ("midrange", "uniform")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")


def lambda_train(
    progress: float, lambda_init: float = 0.1, lambda_max: float = 0.9, shape: str = "cosine"
) -> float:
    """Training-axis trust ``lambda_train(p)``.

    ``lambda_init + (lambda_max - lambda_init) * g(p)`` with ``g(p) = (1 - cos(pi p)) / 2``
    ("cosine") or ``g(p) = p`` ("linear"). Progress is clamped to ``[0, 1]``.

    Args:
        progress: ``global_step / total_steps`` (optimizer steps).
        lambda_init: trust at the start of training.
        lambda_max: trust at the end of training.
        shape: "cosine" or "linear".

    Returns:
        The trust as a Python float.
    """
    _check_choice("shape", shape, SHAPES)
    p = min(max(float(progress), 0.0), 1.0)
    g = (1.0 - math.cos(math.pi * p)) / 2.0 if shape == "cosine" else p
    return lambda_init + (lambda_max - lambda_init) * g


def tidal_lambda(
    t: Tensor,
    progress: float,
    lambda_init: float = 0.1,
    lambda_max: float = 0.9,
    shape: str = "cosine",
    axis: str = "both",
) -> Tensor:
    """Per-sequence (or per-position) interpolation weight ``lambda_t``.

    - "both": ``lambda_train(p) * (1 - t)`` (TIDAL, default).
    - "training_only": ``lambda_train(p)`` (TAID's single axis).
    - "timestep_only": ``lambda_max * (1 - t)``.

    Args:
        t: Float[...] diffusion times in ``(0, 1]``, e.g. ``[B]`` or ``[N]``.
        progress: training progress in ``[0, 1]``.
        lambda_init, lambda_max, shape: see :func:`lambda_train`.
        axis: one of "both", "training_only", "timestep_only".

    Returns:
        Float tensor of ``t``'s shape (float32 at least).
    """
    _check_choice("axis", axis, AXES)
    t = t.float()
    if axis == "timestep_only":
        return lambda_max * (1.0 - t)
    lam = lambda_train(progress, lambda_init, lambda_max, shape)
    if axis == "training_only":
        return torch.full_like(t, lam)
    return lam * (1.0 - t)


def midrange_weight(t: Tensor, center: float = 0.5, width: float = 0.15) -> Tensor:
    """Gaussian time weight ``exp(-(t - 0.5)^2 / (2 * 0.15^2))`` (docs/method.md §6).

    Args:
        t: Float[...] diffusion times.

    Returns:
        Float tensor of ``t``'s shape, 1 at ``t = 0.5``.
    """
    t = t.float()
    return torch.exp(-((t - center) ** 2) / (2.0 * width**2))


def time_weight(t: Tensor, kind: str = "midrange") -> Tensor:
    """The distillation time weight by name: "midrange" or "uniform" (all ones)."""
    _check_choice("time weight", kind, TIME_WEIGHTS)
    return midrange_weight(t) if kind == "midrange" else torch.ones_like(t, dtype=torch.float32)
