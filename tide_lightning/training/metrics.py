"""Validation metrics that sync across ranks (torchmetrics states with sum reduction)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class BinnedMean(Metric):
    """Mean of a value in equal-width bins of ``t`` in ``[0, 1]`` (e.g. KL versus t).

    Args:
        num_bins: number of bins (10 in the validation curves).
    """

    full_state_update = False

    def __init__(self, num_bins: int = 10) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.add_state(
            "total", default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "count", default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, values: Tensor, t: Tensor) -> None:
        """Add Float[N] ``values`` observed at times Float[N] ``t``."""
        index = (t.float() * self.num_bins).long().clamp(0, self.num_bins - 1)
        self.total.index_add_(0, index, values.double())
        self.count.index_add_(0, index, torch.ones_like(values, dtype=torch.float64))

    def compute(self) -> Tensor:
        """Float[num_bins] means; NaN for empty bins."""
        return (self.total / self.count).float()

    def centers(self) -> Tensor:
        return (torch.arange(self.num_bins) + 0.5) / self.num_bins
