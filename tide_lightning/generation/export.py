"""Training checkpoints to Hugging Face directories, and one loader for every model form.

A training checkpoint (:class:`~tide_lightning.training.module.DistillationModule`) keeps the
student's weights under ``state_dict["student.model.*"]``, its HF config under
``student_hf_config`` and the mask id under ``student_mask_token_id``; the tokenizer
lives in ``<run_dir>/student_tokenizer`` (``run_dir`` being the parent of the
``checkpoints/`` folder). Three checkpoint forms exist:

- a single ``.ckpt`` file (DDP, single device);
- a DeepSpeed directory (``<name>.ckpt/`` with a ``latest`` tag file): consolidated to
  fp32 with Lightning's ``convert_zero_checkpoint_to_fp32_state_dict``;
- an FSDP sharded directory (``torch.distributed.checkpoint`` files plus Lightning's
  ``meta.pt``): read whole into CPU memory without a process group.

:func:`export_checkpoint` writes ``config.json`` (``model_type: a2d-qwen3``, the mask
id and the training block size), ``model.safetensors`` and the tokenizer, which
:func:`tide_lightning.models.load_student` reads back. :func:`load_any` is what the
command-line tools call: it accepts an exported directory or any checkpoint form.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tide_lightning.models.student import (
    MASK_TOKEN,
    A2DQwen3Config,
    A2DQwen3Model,
    BD3LMStudent,
    check_student_vocab,
    load_student,
    resolve_attention,
)

DEFAULT_BLOCK_SIZE = 32
_PREFIXES = ("_forward_module.", "student.model.")


@dataclass(frozen=True)
class LoadedStudent:
    """A student ready to sample.

    Attributes:
        student: the model, in eval mode.
        tokenizer: its tokenizer (contains ``<|mask|>``).
        block_size: the block size it was trained with (32 when unrecorded).
    """

    student: BD3LMStudent
    tokenizer: Any
    block_size: int


def is_deepspeed_dir(path: Path) -> bool:
    """A DeepSpeed checkpoint directory (Lightning writes a ``latest`` tag file)."""
    return path.is_dir() and (path / "latest").is_file()


def is_sharded_dir(path: Path) -> bool:
    """An FSDP sharded checkpoint (``torch.distributed.checkpoint`` plus ``meta.pt``)."""
    return path.is_dir() and (path / ".metadata").is_file()


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint of any form into one CPU dict.

    Args:
        path: a ``.ckpt`` file, a DeepSpeed checkpoint directory or an FSDP sharded one.

    Returns:
        The checkpoint dict; the weights are under ``"state_dict"``.
    """
    path = Path(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    if is_deepspeed_dir(path):
        from lightning.pytorch.utilities.deepspeed import (
            convert_zero_checkpoint_to_fp32_state_dict,
        )

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "consolidated.ckpt"
            convert_zero_checkpoint_to_fp32_state_dict(str(path), str(out))
            return torch.load(out, map_location="cpu", weights_only=False)
    if is_sharded_dir(path):
        return _load_sharded(path)
    raise FileNotFoundError(
        f"{str(path)!r} is neither a checkpoint file, a DeepSpeed directory (with 'latest') "
        "nor a sharded one (with '.metadata')"
    )


def _load_sharded(path: Path) -> dict[str, Any]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    checkpoint: dict[str, Any] = {}
    _load_state_dict(
        checkpoint,
        storage_reader=FileSystemReader(str(path)),
        planner=_EmptyStateDictLoadPlanner(),
        no_dist=True,
    )
    meta = path / "meta.pt"  # Lightning keeps the non-tensor part of the checkpoint here
    if meta.is_file():
        checkpoint.update(torch.load(meta, map_location="cpu", weights_only=False))
    if "state_dict" not in checkpoint and "model" in checkpoint:
        checkpoint["state_dict"] = checkpoint.pop("model")
    return checkpoint


def student_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The student's weights under Hugging Face names (``model.layers.0...``, ``lm_head...``).

    Args:
        checkpoint: a training checkpoint dict.

    Returns:
        Name to tensor, every other module (teacher, metrics) left out.
    """
    state = checkpoint.get("state_dict")
    if state is None:
        raise ValueError("the checkpoint has no 'state_dict'")
    weights = {}
    for name, tensor in state.items():
        if name.startswith(_PREFIXES[0]):
            name = name[len(_PREFIXES[0]) :]
        if name.startswith(_PREFIXES[1]):
            weights[name[len(_PREFIXES[1]) :]] = tensor
    if not weights:
        raise ValueError("the checkpoint holds no 'student.model.*' weights")
    return weights


def checkpoint_block_size(checkpoint: dict[str, Any]) -> int | None:
    """The training block size recorded in the module's hyper-parameters, if any."""
    objective = checkpoint.get("hyper_parameters", {}).get("objective", {})
    return objective.get("block_size") if isinstance(objective, dict) else None


def student_from_checkpoint(
    checkpoint: dict[str, Any], dtype: torch.dtype | None = None, attention: str = "sdpa"
) -> BD3LMStudent:
    """Rebuild the student of a training checkpoint.

    Args:
        checkpoint: a training checkpoint dict (``student_hf_config``,
            ``student_mask_token_id``, ``state_dict``).
        dtype: parameter dtype (default: as stored).
        attention: ``"auto" | "sdpa" | "flex"``.

    Returns:
        :class:`BD3LMStudent` in eval mode.
    """
    for key in ("student_hf_config", "student_mask_token_id"):
        if checkpoint.get(key) is None:
            raise ValueError(f"the checkpoint lacks {key!r} (not written by DistillationModule?)")
    config = A2DQwen3Config.from_dict(dict(checkpoint["student_hf_config"]))
    config.mask_token_id = checkpoint["student_mask_token_id"]
    block_size = checkpoint_block_size(checkpoint)
    if block_size is not None:
        config.block_size = block_size
    weights = student_weights(checkpoint)
    model = A2DQwen3Model(config)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"student weights do not match the config: {missing[:3]} {unexpected[:3]}")
    model.set_attn_implementation(resolve_attention(attention))
    if dtype is not None:
        model.to(dtype)
    return BD3LMStudent(model, config.mask_token_id).eval()


def run_dir_of(checkpoint_path: str | Path) -> Path:
    """``run_dir`` of a checkpoint written to ``<run_dir>/checkpoints/``."""
    return Path(checkpoint_path).resolve().parent.parent


def tokenizer_for_run(run_dir: str | Path):
    """The student tokenizer of a training run.

    Looks in ``<run_dir>/student_tokenizer`` (trained tokenizers), then in the run's
    ``config.yaml`` (``student.path`` or a ``student.tokenizer.source`` directory, or the
    packaged Qwen3 tokenizer).
    """
    from tide_lightning.models.loading import load_tokenizer_dir

    run_dir = Path(run_dir)
    saved = run_dir / "student_tokenizer"
    if (saved / "tokenizer.json").is_file() or (saved / "tokenizer_config.json").is_file():
        return load_tokenizer_dir(saved)
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        from omegaconf import OmegaConf

        student = OmegaConf.load(config_file).get("student", {})
        source = student.get("path") or (student.get("tokenizer") or {}).get("source")
        if source == "qwen3":
            from tide_lightning.data.tokenization import load_qwen3_tokenizer

            return load_qwen3_tokenizer()
        if source and Path(source).is_dir():
            return load_tokenizer_dir(source)
    raise FileNotFoundError(
        f"no student tokenizer for run {str(run_dir)!r}: pass the tokenizer directory explicitly"
    )


def _check_tokenizer(tokenizer, student: BD3LMStudent) -> None:
    mask_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if mask_id is None or mask_id == tokenizer.unk_token_id:
        mask_id = None
    check_student_vocab(mask_id, student.vocab_size, len(tokenizer))
    if mask_id != student.mask_token_id:
        raise ValueError(
            f"tokenizer {MASK_TOKEN} id {mask_id} != checkpoint mask id {student.mask_token_id}"
        )


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a training checkpoint as a Hugging Face directory.

    Args:
        checkpoint_path: ``.ckpt`` file or DeepSpeed/FSDP checkpoint directory.
        out_dir: destination (created; existing files are overwritten).
        tokenizer_dir: the student tokenizer; default: found from the run directory.
        dtype: weight dtype to write (default: as stored, normally float32).

    Returns:
        ``out_dir``, loadable with :func:`tide_lightning.models.load_student`.
    """

    checkpoint = load_training_checkpoint(checkpoint_path)
    student = student_from_checkpoint(checkpoint, dtype)
    tokenizer = _checkpoint_tokenizer(checkpoint_path, tokenizer_dir, student)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    student.model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    make_world_readable(out_dir)
    return out_dir


def _checkpoint_tokenizer(checkpoint_path, tokenizer_dir, student):
    """The tokenizer of a training checkpoint: ``tokenizer_dir``, else its run folder's."""
    from tide_lightning.models.loading import load_tokenizer_dir

    if tokenizer_dir is None:
        tokenizer = tokenizer_for_run(run_dir_of(checkpoint_path))
    else:
        tokenizer = load_tokenizer_dir(tokenizer_dir)
    _check_tokenizer(tokenizer, student)
    return tokenizer


def make_world_readable(directory: Path) -> None:
    """Files 0644 and folders 0755 below ``directory``.

    safetensors writes ``model.safetensors`` through a private temporary file (mode 0600),
    which would keep an exported model from the other users of a shared cluster.
    """
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def load_any(
    path: str | Path,
    dtype: torch.dtype | None = None,
    attention: str = "sdpa",
    tokenizer_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> LoadedStudent:
    """Load a student for sampling from an exported directory or a training checkpoint.

    Args:
        path: HF directory with ``config.json``, a ``.ckpt`` file, or a DeepSpeed/FSDP
            checkpoint directory.
        dtype: parameter dtype (default bf16 on CUDA, float32 on CPU).
        attention: ``"auto" | "sdpa" | "flex"``.
        tokenizer_dir: overrides the tokenizer of a training checkpoint.
        device: where the model goes (default CUDA when available, else CPU).

    Returns:
        :class:`LoadedStudent`.
    """

    path = Path(path)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if path.is_dir() and (path / "config.json").is_file():
        student, tokenizer = load_student(path, dtype=dtype, attention=attention)
        block_size = getattr(student.model.config, "block_size", None)
    else:
        checkpoint = load_training_checkpoint(path)
        student = student_from_checkpoint(checkpoint, dtype, attention)
        block_size = checkpoint_block_size(checkpoint)
        tokenizer = _checkpoint_tokenizer(path, tokenizer_dir, student)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    student = student.to(device)
    return LoadedStudent(student.eval(), tokenizer, int(block_size or DEFAULT_BLOCK_SIZE))


# --- provenance ----------------------------------------------------------------------------


def code_version() -> str:
    """``git describe --always --dirty`` of this checkout, else the installed package version."""
    import subprocess
    from importlib import metadata

    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if done.returncode == 0 and done.stdout.strip():
                return f"git {done.stdout.strip()}"
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return f"tide_lightning {metadata.version('tide_lightning')}"
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_provenance(path: str | Path) -> dict[str, Any]:
    """Which model: its absolute path and the SHA-256 of its weights.

    Args:
        path: an exported directory (``*.safetensors`` hashed, in name order) or a
            checkpoint file; a checkpoint directory is recorded without a hash.

    Returns:
        ``{"path": ..., "sha256": {file name: hex} }``.
    """
    path = Path(path).resolve()
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    return {"path": str(path), "sha256": {f.name: file_sha256(f) for f in files}}
