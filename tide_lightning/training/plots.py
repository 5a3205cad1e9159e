"""Pictures for TensorBoard's Images tab: the TIDAL trust heatmap and KL versus t.

Each function returns an ``[H, W, 3]`` uint8 array (matplotlib's Agg backend, no
display needed), ready for ``SummaryWriter.add_image(..., dataformats="HWC")``.
"""

from __future__ import annotations

import numpy as np
import torch

from tide_lightning.method.schedules import tidal_lambda


def _render(fig) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return image


def trust_heatmap(
    progress: float,
    lambda_init: float = 0.1,
    lambda_max: float = 0.9,
    shape: str = "cosine",
    axis: str = "both",
    resolution: int = 101,
) -> np.ndarray:
    """Heatmap of ``lambda_t(t, p)`` over diffusion time and training progress.

    The current progress is drawn as a vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(0, 1, resolution)
    values = torch.stack(
        [tidal_lambda(grid, float(p), lambda_init, lambda_max, shape, axis) for p in grid], dim=1
    )
    fig, ax = plt.subplots(figsize=(5, 4), dpi=80)
    im = ax.imshow(
        values.numpy(), origin="lower", extent=(0, 1, 0, 1), aspect="auto", vmin=0, vmax=1
    )
    ax.axvline(progress, color="white", linestyle="--", label=f"p = {progress:.2f}")
    ax.set_xlabel("training progress p")
    ax.set_ylabel("diffusion time t")
    ax.set_title(f"TIDAL trust lambda_t ({axis})")
    ax.legend(loc="upper right")
    fig.colorbar(im, ax=ax)
    return _render(fig)


def kl_curve(
    centers: np.ndarray, values: np.ndarray, title: str = "KL to teacher vs t"
) -> np.ndarray:
    """Line plot of a per-t-bin curve (empty bins are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = np.isfinite(values)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=80)
    ax.plot(centers[keep], values[keep], marker="o")
    ax.set_xlabel("diffusion time t")
    ax.set_ylabel("KL")
    ax.set_xlim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _render(fig)
