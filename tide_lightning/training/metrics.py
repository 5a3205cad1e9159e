"""Validation metrics that sync across ranks (torchmetrics states with sum reduction)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class BinnedMean(Metric):
    """Mean, spread and count of a value in equal-width bins of ``t`` in ``[0, 1]``.

    Used for the KL-versus-t curve: sums, sums of squares and counts are summed over
    ranks, so the mean and standard deviation are those of all ranks' values.

    Args:
        num_bins: number of bins (10 in the validation curves).
    """

    full_state_update = False

    def __init__(self, num_bins: int = 10) -> None:
        super().__init__()
        self.num_bins = num_bins
        for name in ("total", "total_sq", "count"):
            self.add_state(
                name, default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, values: Tensor, t: Tensor) -> None:
        """Add Float[N] ``values`` observed at times Float[N] ``t``."""
        index = (t.float() * self.num_bins).long().clamp(0, self.num_bins - 1)
        values = values.double()
        self.total.index_add_(0, index, values)
        self.total_sq.index_add_(0, index, values * values)
        self.count.index_add_(0, index, torch.ones_like(values))

    def compute(self) -> Tensor:
        """Float[num_bins] means; NaN for empty bins."""
        return (self.total / self.count).float()

    def std(self) -> Tensor:
        """Float[num_bins] population standard deviations; NaN for empty bins."""
        mean = self.total / self.count
        return (self.total_sq / self.count - mean * mean).clamp_min(0).sqrt().float()

    def counts(self) -> Tensor:
        """Int64[num_bins] number of values per bin."""
        return self.count.long()

    def centers(self) -> Tensor:
        """Float[num_bins] bin midpoints."""
        return (torch.arange(self.num_bins) + 0.5) / self.num_bins

    def edges(self) -> Tensor:
        """Float[num_bins + 1] bin boundaries, 0 to 1."""
        return torch.linspace(0, 1, self.num_bins + 1)


class SummedTable(Metric):
    """An element-wise sum of Float[rows, cols] tables over updates and ranks.

    Used for the mechanism measurements (per t bin sums of the teacher's accuracy, NLL and
    token counts): summing before dividing gives the global means across ranks.

    Args:
        rows, cols: the table's shape.
    """

    full_state_update = False

    def __init__(self, rows: int, cols: int) -> None:
        super().__init__()
        self.add_state(
            "total", default=torch.zeros(rows, cols, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, table: Tensor) -> None:
        """Add Float[rows, cols] ``table``."""
        self.total += table.to(self.total)

    def compute(self) -> Tensor:
        """Float64[rows, cols]: the sum over every update of every rank."""
        return self.total.clone()


def bin_names(num_bins: int, prefix: str = "val_kl_by_t", sep: str = "/t_") -> list[str]:
    """Scalar tags naming each bin by its t range: ``val_kl_by_t/t_0.0-0.1``, ...

    ``sep`` joins the prefix and the range (``"_t"``: ``mech/teacher_acc_t0.0-0.2``).
    """

    def edge(i: int) -> str:
        text = f"{i / num_bins:.3f}".rstrip("0")
        return text + "0" if text.endswith(".") else text

    return [f"{prefix}{sep}{edge(i)}-{edge(i + 1)}" for i in range(num_bins)]
