"""Small Trainer callbacks of the application (each one concern)."""

from __future__ import annotations

import lightning as L

from tide_lightning.data import DistillDataModule


class DataSkipLogger(L.Callback):
    """Logs the records the data pipeline skipped, by reason, as ``data/skipped_<reason>``.

    Counts are this rank's totals since the start of training (restored on resume).
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        datamodule = trainer.datamodule
        if not isinstance(datamodule, DistillDataModule):
            return
        if trainer.global_step % max(trainer.log_every_n_steps, 1):
            return
        counts = datamodule.skip_counts("train")
        pl_module.log_dict(
            {f"data/skipped_{reason}": float(n) for reason, n in counts.items()},
            on_step=True,
            on_epoch=False,
        )
