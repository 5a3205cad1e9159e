"""``fit`` and ``validate`` as functions: what the CLI, the demo and SLURM jobs call.

A run folder is one experiment. Before anything is built, :func:`fit`

1. expands the ``{variant}``, ``{seed}`` and ``{date}`` placeholders of ``run_dir`` and
   stores every path of the config resolved (absolute), so ``export`` and ``evaluate``
   work from any folder;
2. checks that the launcher (``torchrun``/``fabric run``, ``srun``) started as many
   processes as ``trainer.devices x trainer.num_nodes``;
3. when it resumes, compares the config with the one saved in the run folder and refuses
   any difference outside :data:`RESUMABLE_CHANGES` (and a changed world size), naming
   the keys and the two ways out.

It then trains and prints a closing summary (final metrics, checkpoint and TensorBoard
paths, tokens/s). :func:`validate` logs to its own TensorBoard folder
(``tensorboard/validate``) at the checkpoint's step, so the training run's curves keep
their history.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import logging
import os
import re
import time
import warnings
from pathlib import Path

from tide_lightning.config import RunConfig, to_yaml
from tide_lightning.errors import UserError

RESUMABLE_CHANGES = (
    "resume",
    "run_dir",
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.log_every_n_steps",
    "trainer.val_check_interval",
    "trainer.checkpoint_every_n_steps",
    "trainer.limit_val_batches",
    "trainer.enable_progress_bar",
    "trainer.keep_last",
    "trainer.mechanism_metrics",
    "data.num_workers",
    "optim.max_bad_steps",
)
"""Config keys a resumed run may change: how long, how often to log, validate and save."""

WORLD_KEYS = ("trainer.devices", "trainer.num_nodes")
_TOKENIZER_KINDS = ("qwen3", "bpe", "unigram")  # tokenizer sources that are not paths
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


# --- the run folder ----------------------------------------------------------------------


def _placeholders(config: RunConfig) -> dict[str, str]:
    return {
        "variant": config.objective.variant,
        "seed": str(config.seed),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
    }


def expand_run_dir(config: RunConfig) -> str:
    """``run_dir`` with ``{variant}``, ``{seed}`` and ``{date}`` filled in.

    ``{date}`` is the UTC date the run started: with ``resume: auto`` an existing folder
    of the same pattern with another date and a ``last.ckpt`` is resumed (the newest),
    so a requeue after midnight continues its run instead of starting a new one.

    Raises:
        UserError: an unknown placeholder.
    """
    pattern = config.run_dir
    values = _placeholders(config)
    unknown = sorted(set(_PLACEHOLDER.findall(pattern)) - set(values))
    if unknown:
        raise UserError(
            f"run_dir={pattern!r}: unknown placeholder(s) {', '.join(unknown)}; "
            f"use {{variant}}, {{seed}} or {{date}}"
        )

    def fill(date: str) -> str:
        return _PLACEHOLDER.sub(lambda m: {**values, "date": date}[m.group(1)], pattern)

    expanded = fill(values["date"])
    if "{date}" in pattern and config.resume == "auto":
        found = glob.glob(
            os.path.join(glob.escape(fill("\0")).replace("\0", "*"), "checkpoints", "last.ckpt")
        )
        earlier = sorted(str(Path(p).parent.parent) for p in found)
        earlier = [p for p in earlier if p != expanded]
        if earlier and not (Path(expanded) / "checkpoints" / "last.ckpt").is_file():
            expanded = earlier[-1]
    return expanded


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def _tokenizer(tok):
    if tok is None or tok.source in _TOKENIZER_KINDS:
        return tok
    return dataclasses.replace(tok, source=_absolute(tok.source))


def _sources(sources):
    return [
        s if s.kind == "hf" else dataclasses.replace(s, path=_absolute(s.path)) for s in sources
    ]


def resolved(config: RunConfig) -> RunConfig:
    """The config with ``run_dir`` expanded and every local path absolute.

    This is what the run uses and what ``config.yaml`` stores, so a later ``export`` or
    ``evaluate`` finds the tokenizer and data from any working directory.
    """
    s, t, d = config.student, config.teacher, config.data
    student = dataclasses.replace(s, path=_absolute(s.path), tokenizer=_tokenizer(s.tokenizer))
    teacher = (
        None
        if t is None
        else dataclasses.replace(t, path=_absolute(t.path), tokenizer=_tokenizer(t.tokenizer))
    )
    data = dataclasses.replace(d, sources=_sources(d.sources), val_sources=_sources(d.val_sources))
    resume = config.resume if config.resume in ("auto", "never") else _absolute(config.resume)
    return dataclasses.replace(
        config,
        run_dir=_absolute(expand_run_dir(config)),
        resume=resume,
        student=student,
        teacher=teacher,
        data=data,
    )


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat = {}
    for key, value in tree.items():
        flat |= _flat(value, f"{prefix}{key}.")
    return flat


def _config_tree(config: RunConfig) -> dict:
    """The config as ``config.yaml`` stores it (through YAML: tuples become lists)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.create(to_yaml(config)), resolve=False)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(config: RunConfig, ckpt: str | None) -> None:
    """Refuse to resume from ``ckpt`` with a config its run was not trained with.

    The reference is ``config.yaml`` in the checkpoint's run folder (absent: no check).

    Raises:
        UserError: a changed world size (with the way to resume and the way to start
            fresh), or other changed keys outside :data:`RESUMABLE_CHANGES`.
    """
    if ckpt is None:
        return
    saved_file = Path(ckpt).resolve().parent.parent / "config.yaml"
    if not saved_file.is_file():
        return
    from omegaconf import OmegaConf

    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=False))
    now = _flat(_config_tree(config))
    missing = object()
    changed = [
        key
        for key in sorted(saved.keys() | now.keys())
        if saved.get(key, missing) != now.get(key, missing) and key not in RESUMABLE_CHANGES
    ]
    if not changed:
        return
    ways_out = (
        f"start a new experiment with resume=never or another run_dir (not {saved_file.parent})"
    )
    world = [key for key in changed if key in WORLD_KEYS]
    if world:
        before = " ".join(f"{k}={saved.get(k)}" for k in WORLD_KEYS)
        after = " ".join(f"{k}={now.get(k)}" for k in WORLD_KEYS)
        raise UserError(
            f"{saved_file.parent} was trained with {before}; this run asks for {after}. "
            "The checkpoint's data position is per rank, so it continues only on the same "
            f"world size: resume with {before}, or {ways_out}"
        )
    details = "; ".join(
        f"{key}: {_short(saved.get(key))} -> {_short(now.get(key))}" for key in changed
    )
    raise UserError(
        f"{saved_file.parent} holds another experiment: its config.yaml differs in "
        f"{len(changed)} key(s) ({details}). A run may change only "
        f"{', '.join(RESUMABLE_CHANGES[2:])} when it resumes. To keep both, {ways_out}"
    )


def check_world_size(config: RunConfig, environ=os.environ) -> None:
    """The processes a launcher started must be the ones the config asks for.

    Without this, ``fabric run --devices=2`` on a config with ``trainer.devices=1``
    runs two independent trainings into the same folder.

    Raises:
        UserError: ``torchrun``/``fabric run`` (``WORLD_SIZE``) or ``srun``
            (``SLURM_NTASKS``) started another number of processes.
    """
    tr = config.trainer
    asked = tr.devices * tr.num_nodes
    if "TORCHELASTIC_RUN_ID" in environ and "WORLD_SIZE" in environ:
        started, launcher = int(environ["WORLD_SIZE"]), "torchrun/fabric run"
    elif "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        started, launcher = int(environ["SLURM_NTASKS"]), "srun"
    else:
        return
    if started != asked:
        per_node = max(started // max(tr.num_nodes, 1), 1)
        raise UserError(
            f"{launcher} started {started} processes but the config asks for "
            f"trainer.devices x trainer.num_nodes = {tr.devices} x {tr.num_nodes} = {asked}: "
            f"pass trainer.devices={per_node} trainer.num_nodes={tr.num_nodes} "
            "(one process per device), or start as many processes as configured"
        )


def _launcher_rank(environ=os.environ) -> int:
    """This process's global rank as a launcher set it (0 before Lightning spawns any)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if environ.get(key, "0") not in ("", "0"):
            return int(environ[key])
    return 0


def set_aside_previous_run(config: RunConfig) -> Path | None:
    """``resume=never`` in a used folder: move its checkpoints and TensorBoard events aside.

    A fresh run would otherwise write steps 0, 1, ... over the old curves and mix its
    checkpoints with the old ones. They move to ``run_dir/replaced-<UTC time>/`` (kept,
    not deleted); trained tokenizers stay.

    Returns:
        The folder they moved to, or None when there was nothing to move (or not rank 0).
    """
    run_dir = Path(config.run_dir)
    used = [run_dir / name for name in ("checkpoints", "tensorboard", "config.yaml")]
    used = [path for path in used if path.exists()]
    if config.resume != "never" or not used or _launcher_rank() != 0:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    aside = run_dir / f"replaced-{stamp}"
    aside.mkdir()
    for path in used:
        path.rename(aside / path.name)
    return aside


# --- console -----------------------------------------------------------------------------


def quiet_third_party() -> None:
    """Silence known third-party console noise that says nothing about this run.

    - Lightning's info lines ("GPU available", "TPU available", cloud-logging adverts,
      "`Trainer.fit` stopped"): fit prints its own opening and closing lines instead.
      Its warnings stay visible.
    - Lightning's own use of a torch pytree API torch deprecated (not our code).
    - Lightning's advice about ``IterableDataset.__len__`` with several workers: the data
      module splits its stream per rank and worker itself (tests/data).
    - torch's deprecation of collective names DeepSpeed and Lightning still use.
    - DeepSpeed's "Setting accelerator to CPU ... unable to detect" warning (printed on
      stdout when it guesses): without CUDA the accelerator is named, ``DS_ACCELERATOR=cpu``,
      unless the environment already chose one.
    """
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    # torch renamed two collectives that DeepSpeed's ZeRO-3 gather and Lightning's
    # all_gather still call by their old names (one line per rank and call site).
    warnings.filterwarnings("ignore", message=r"`torch.distributed.all_gather_into_tensor` is dep")
    warnings.filterwarnings("ignore", message=r"torch.distributed.nn.functional.all_gather is dep")


def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _opening_line(run, ckpt: str | None) -> str:
    config = run.config
    params = sum(p.numel() for p in run.module.student.parameters())
    world = config.trainer.devices * config.trainer.num_nodes
    start = f"resuming {ckpt}" if ckpt else "new run"
    return (
        f"fit {config.objective.variant} ({config.pipeline} pipeline): student {_count(params)} "
        f"parameters, {run.module.teacher_label}, {world} process(es), "
        f"{run.trainer.max_steps} steps; {start}\n  run_dir {config.run_dir}"
    )


def closing_summary(run, seconds: float) -> str:
    """What a finished ``fit`` prints: step, metrics, where things went, tokens/s."""
    trainer, module, run_dir = run.trainer, run.module, Path(run.config.run_dir)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    world = trainer.world_size
    tokens = module.tokens_trained * world  # every rank trains as many batches
    steps_rate = tokens / max(module.train_seconds, 1e-9)
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    lines = [
        f"done: step {trainer.global_step}/{trainer.max_steps} in {seconds:.0f} s: "
        f"{tokens:,} tokens, {tokens / max(seconds, 1e-9):,.0f} tokens/s overall, "
        f"{steps_rate:,.0f} in training steps ({world} process(es))",
        "  validation: "
        + ("  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())) or "none run"),
        f"  checkpoints: {run_dir / 'checkpoints'} ({', '.join(kept)})",
        f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}",
    ]
    return "\n".join(lines)


# --- entry points ------------------------------------------------------------------------


def fit(config: RunConfig, callbacks: list | None = None):
    """Train (or resume, per ``config.resume``) and return the run's objects.

    Raises:
        UserError: a launcher/config world-size mismatch, or a resume into a folder
            whose saved config differs (see :func:`check_resume`).
    """
    from tide_lightning.training.builders import build_run, resume_path

    quiet_third_party()
    started = time.perf_counter()
    config = resolved(config)
    check_world_size(config)
    ckpt = resume_path(config)
    check_resume(config, ckpt)
    aside = set_aside_previous_run(config)
    if aside is not None:
        print(f"resume=never: the previous run's files moved to {aside}", flush=True)
    run = build_run(config, callbacks)
    if run.trainer.is_global_zero:
        print(_opening_line(run, ckpt), flush=True)
        (Path(config.run_dir) / "config.yaml").write_text(to_yaml(config))
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt)
    if run.trainer.is_global_zero:
        print(closing_summary(run, time.perf_counter() - started), flush=True)
    return run


def validate(config: RunConfig, ckpt: str | None = None, name: str = "validate") -> list[dict]:
    """Validation metrics of a checkpoint (default: the last one in ``run_dir``).

    The scalars and images go to ``run_dir/tensorboard/<name>`` at the checkpoint's
    step, a run of their own beside the training curves (never over them).
    """
    from tide_lightning.training.builders import build_run, resume_path
    from tide_lightning.training.checkpoints import resume_checkpoint
    from tide_lightning.training.tensorboard import RunLogger

    quiet_third_party()
    config = resolved(config)
    check_world_size(config)
    # An explicit --ckpt must exist and load (one-line error otherwise).
    ckpt = resume_checkpoint(ckpt, config.run_dir) if ckpt else resume_path(config)
    if ckpt is None:
        raise UserError(f"nothing to validate: no checkpoint in {config.run_dir}; pass --ckpt")
    run = build_run(config)
    run.trainer.logger = RunLogger(config.run_dir, version=name)
    run.trainer.validate(run.module, datamodule=run.datamodule, ckpt_path=ckpt)
    # The module writes its TensorBoard scalars itself (at the checkpoint's step) and logs
    # to Lightning with logger=False, so the values are read from the callback metrics.
    metrics = run.trainer.callback_metrics
    results = [{k: float(v) for k, v in sorted(metrics.items()) if k.startswith("val/")}]
    if run.trainer.is_global_zero:
        values = "  ".join(f"{k} {v:.4f}" for k, v in sorted(results[0].items()))
        print(
            f"validated {ckpt} (step {run.module.log_step}): {values}\n"
            f"  TensorBoard: {Path(config.run_dir) / 'tensorboard' / name}",
            flush=True,
        )
    return results
