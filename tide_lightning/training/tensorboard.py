"""The run's TensorBoard logger: hyperparameters registered with the real validation metrics.

Lightning's :class:`TensorBoardLogger` either writes a placeholder ``hp_metric = -1`` or,
given metric values, writes those values as scalars at step 0. Neither helps the HParams
tab compare variants. :class:`RunLogger` registers the hyperparameters together with the
*names* of the validation scalars the run will log (``val/ce``, ``val/kl_to_teacher``, ...);
TensorBoard's HParams view then reads each metric's latest value from those scalar series,
so every variant's run becomes one comparable row.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"objective/variant": ..., ...}`` with TensorBoard-safe values.

    Lists, tuples and None become strings: the HParams plugin takes only numbers,
    strings and booleans.
    """
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten_params(value, f"{name}/")
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class RunLogger(TensorBoardLogger):
    """A TensorBoard logger whose hyperparameters carry the run's validation metric names.

    Args:
        save_dir: the run directory.
        name: sub-folder of the event files (``tensorboard``).
        version: sub-folder below ``name``; ``""`` for training, e.g. ``"validate"`` for a
            separate validation of a checkpoint.
        metric_names: scalar tags the HParams view shows per run (set before ``fit``).
    """

    def __init__(
        self, save_dir: str, name: str = "tensorboard", version: str = "", metric_names=()
    ) -> None:
        super().__init__(save_dir, name=name, version=version, default_hp_metric=False)
        self.metric_names: tuple[str, ...] = tuple(metric_names)

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        # Lightning adds the epoch to every record; runs here are step-based and its chart
        # would be a flat line among the curves.
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None, step=None) -> None:
        """Save ``hparams.yaml`` and register ``params`` with :attr:`metric_names`.

        No metric value is written here (``metrics`` is ignored): the values come from the
        validation scalars of the same names.
        """
        super().log_hyperparams(params)  # hparams.yaml; no hp_metric (default_hp_metric off)
        if not self.metric_names:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = flatten_params(dict(params))
        # hparams() only needs the metric names; the values it is given are not written.
        exp, ssi, sei = hparams(flat, dict.fromkeys(self.metric_names, 0.0))
        writer = self.experiment.file_writer
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
