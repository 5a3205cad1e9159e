"""``fit`` and ``validate`` as functions: what the CLI, the demo and SLURM jobs call."""

from __future__ import annotations

from pathlib import Path

from tide_lightning.config import RunConfig, to_yaml
from tide_lightning.training.builders import Run, build_run, resume_path


def fit(config: RunConfig, callbacks: list | None = None) -> Run:
    """Train (or resume, per ``config.resume``) and return the run's objects."""
    run = build_run(config, callbacks)
    ckpt = resume_path(config)
    if run.trainer.is_global_zero:
        (Path(config.run_dir) / "config.yaml").write_text(to_yaml(config))
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt)
    return run


def validate(config: RunConfig, ckpt: str | None = None) -> list[dict]:
    """Validation metrics of a checkpoint (default: the last one in ``run_dir``)."""
    run = build_run(config)
    ckpt = ckpt or resume_path(config)
    return run.trainer.validate(run.module, datamodule=run.datamodule, ckpt_path=ckpt)
