"""Checkpoints that survive faults: atomic writes, and a resume that skips broken files.

Writing: :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) streams the
checkpoint into a hidden temporary file in the target's own directory, fsyncs it, then
renames it over the target and fsyncs the directory. A rename within one file system
is atomic, so a process killed at any moment of a save (SLURM's SIGKILL after the grace
time, the OOM killer, a node failure) leaves either the previous file or the new one,
never a torn ``last.ckpt``; the fsyncs make the same hold across a power loss. Streaming
also avoids Lightning's default in-memory copy of the whole checkpoint.

Reading: :func:`resume_checkpoint` is the resume choice. With ``resume: auto`` it tries
``last.ckpt`` and then the step checkpoints, newest first, and takes the first one that
is intact (a readable zip archive whose members all pass their CRC check, with a
Lightning checkpoint inside); every broken one is reported by path and passed over, so a
requeued job does not crash on the same bad file forever. An explicit path must be
intact: the user named it, so falling back silently would resume something else.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tide_lightning.errors import UserError

log = logging.getLogger(__name__)

_STEP = re.compile(r"step(\d+)")
_TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some file systems do not open directories; the rename still holds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_path(path: str | Path) -> Path:
    """Where a save of ``path`` is staged: a hidden file beside it (same file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}{_TMP_SUFFIX}")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never seen half-written.

    Args:
        obj: anything ``torch.save`` accepts (a Lightning checkpoint dict).
        path: the target file; its directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O with :func:`atomic_save` for local paths.

    Remote URLs (``s3://``...) keep Lightning's own writer (object stores publish an
    object only once it is complete).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see :func:`atomic_save`)."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, path)


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it is intact.

    A torch checkpoint is a zip archive: a truncated file lacks its central directory,
    a torn or flipped byte fails a member's CRC. Reading every member costs one pass
    over the file (about a second per GB), small next to loading it. The pickle is then
    opened memory-mapped (no tensor data copied) to check it is a Lightning checkpoint.
    Directories (DeepSpeed / FSDP sharded checkpoints) are taken as they are.
    """
    path = Path(path)
    if path.is_dir():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            return f"member {bad} fails its CRC check"
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # whatever a broken file raises, it is broken
        return f"{type(err).__name__}: {err}"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def _newest_first(checkpoint_dir: Path) -> list[Path]:
    """``last.ckpt``, then step checkpoints by step (highest first), then others by age."""

    def order(p: Path) -> tuple[int, int, float]:
        if p.name == "last.ckpt":
            return (0, 0, 0.0)
        match = _STEP.search(p.stem)
        if match:
            return (1, -int(match.group(1)), 0.0)
        return (2, 0, -p.stat().st_mtime)

    return sorted(
        (p for p in checkpoint_dir.glob("*.ckpt") if not p.name.startswith(".")), key=order
    )


def _remove_stale_temporaries(checkpoint_dir: Path) -> None:
    """Delete what saves killed midway left behind (only rank 0, which writes them)."""
    if rank_zero_only.rank != 0:
        return
    for tmp in checkpoint_dir.glob(f".*.ckpt{_TMP_SUFFIX}"):
        log.warning("removing %s, left by a checkpoint save that was interrupted", tmp)
        tmp.unlink(missing_ok=True)


def resume_checkpoint(resume: str, run_dir: str | Path) -> str | None:
    """The checkpoint a run resumes from, per ``resume`` (auto, never or a path).

    Args:
        resume: ``"auto"`` (the newest intact checkpoint in ``run_dir/checkpoints``, None
            when there is none), ``"never"``, or a checkpoint path.
        run_dir: the run folder.

    Returns:
        The checkpoint path, or None to start from scratch.

    Raises:
        UserError: an explicit path is missing or broken, or every checkpoint of the
            run is broken (starting over silently would discard the run).
    """
    if resume == "never":
        return None
    if resume != "auto":
        if not Path(resume).exists():
            raise UserError(f"resume checkpoint {resume}: no such file")
        problem = checkpoint_problem(resume)
        if problem is not None:
            raise UserError(f"resume checkpoint {resume} cannot be loaded: {problem}")
        return resume
    checkpoint_dir = Path(run_dir) / "checkpoints"
    if not checkpoint_dir.is_dir():
        return None
    _remove_stale_temporaries(checkpoint_dir)
    broken = []
    for candidate in _newest_first(checkpoint_dir):
        problem = checkpoint_problem(candidate)
        if problem is None:
            if broken:
                log.warning("resuming from %s, the newest intact checkpoint", candidate)
            return str(candidate)
        log.warning("checkpoint %s cannot be loaded (%s): trying an older one", candidate, problem)
        broken.append(f"{candidate} ({problem})")
    if broken:
        raise UserError(
            f"no intact checkpoint in {checkpoint_dir}: {'; '.join(broken)}; "
            "set resume=never to start over or resume=<path> to pick one"
        )
    return None
