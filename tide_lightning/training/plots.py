"""Pictures for TensorBoard's Images tab: TIDAL's trust, KL versus t, the teacher versus t.

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
    centers: np.ndarray,
    history: list[tuple[int, np.ndarray]],
    std: np.ndarray,
    counts: np.ndarray,
    quantity: str = "token KL",
    teacher: str = "teacher",
) -> np.ndarray:
    """KL to the teacher per t-bin: every validation so far, the latest with its spread.

    Args:
        centers: Float[B] bin midpoints in ``[0, 1]``.
        history: ``(step, Float[B] mean per bin)`` of each validation so far, oldest
            first; the last one is the current validation. Empty bins are NaN (skipped).
        std: Float[B] standard deviation per bin of the current validation.
        counts: Int[B] values per bin of the current validation (masked tokens or chunks).
        quantity: what was averaged (``"token KL"`` or ``"chunk KL"``).
        teacher: which teacher, for the title.

    Returns:
        ``[H, W, 3]`` uint8 image; the y axis starts at 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(
        2, 1, figsize=(6, 5), dpi=80, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for index, (step, values) in enumerate(history):
        keep = np.isfinite(values)
        latest = index == len(history) - 1
        ax.plot(
            centers[keep],
            values[keep],
            marker="o" if latest else None,
            linewidth=2 if latest else 1,
            alpha=1.0 if latest else 0.25 + 0.5 * index / max(len(history) - 1, 1),
            color="C0" if latest else "gray",
            label=f"step {step}" if latest or index == 0 else None,
        )
    if history:
        values = history[-1][1]
        keep = np.isfinite(values) & np.isfinite(std)
        ax.fill_between(
            centers[keep],
            np.clip(values[keep] - std[keep], 0, None),
            values[keep] + std[keep],
            color="C0",
            alpha=0.2,
            label="+-1 std (latest)",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, 1)
    ax.set_ylabel(f"mean {quantity} (nats)")
    ax.set_title(f"{quantity} to {teacher}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    width = 1.0 / max(len(centers), 1)
    bars.bar(centers, counts, width=0.9 * width, color="C1")
    bars.set_ylabel(f"{quantity.split()[0]}s")  # what each bin averaged over
    bars.set_xlabel("diffusion time t (mask rate)")
    return _render(fig)


def teacher_curve(
    centers: np.ndarray,
    acc_plain: np.ndarray,
    acc_compdemo: np.ndarray,
    counts: np.ndarray,
    lambda_t: np.ndarray | None = None,
    teacher: str = "teacher",
    step: int | None = None,
) -> np.ndarray:
    """The teacher's top-1 accuracy on masked tokens per t bin, plain and with CompDemo.

    With ``lambda_t`` (TIDAL variants) the trust at the bin centres is drawn on the same
    0-1 axis, so the schedule reads against the teacher's reliability.

    Args:
        centers: Float[B] bin midpoints in ``[0, 1]``.
        acc_plain: Float[B] accuracy with every masked token hidden (NaN: empty bin).
        acc_compdemo: Float[B] accuracy with CompDemo's complementary passes.
        counts: Int[B] masked tokens per bin.
        lambda_t: Float[B] TIDAL trust at the bin centres and the current progress, or None.
        teacher: which teacher, for the title.
        step: the step of the weights, for the title.

    Returns:
        ``[H, W, 3]`` uint8 image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bars) = plt.subplots(
        2, 1, figsize=(6, 5), dpi=80, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for values, label, style in (
        (acc_plain, "teacher acc, all masked hidden", "o-"),
        (acc_compdemo, "teacher acc, CompDemo", "s-"),
        (lambda_t, "lambda_t (TIDAL trust)", "^--"),
    ):
        if values is None:
            continue
        keep = np.isfinite(values)
        ax.plot(centers[keep], values[keep], style, label=label)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_ylabel("top-1 accuracy / trust")
    when = "" if step is None else f", step {step}"
    ax.set_title(f"{teacher} on masked tokens{when}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    width = 1.0 / max(len(centers), 1)
    bars.bar(centers, counts, width=0.9 * width, color="C1")
    bars.set_ylabel("tokens")
    bars.set_xlabel("diffusion time t (mask rate)")
    return _render(fig)
