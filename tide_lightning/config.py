"""Structured configs: OmegaConf YAML validated against typed dataclasses.

An unknown or mistyped key fails at load time with the key's name (OmegaConf's
structured-config checks); cross-field rules live in each group's ``__post_init__``.
Configs stop here: :mod:`tide_lightning.training.builders` turns them into typed arguments and
nothing below that boundary reads a config object.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tide_lightning.errors import UserError
from tide_lightning.method.variants import PIPELINES, get_variant


@dataclass
class SourceConfig:
    kind: str = MISSING
    """jsonl, parquet, text, code or hf."""
    path: str = MISSING
    """File, directory, glob, or HF dataset name (kind hf)."""
    weight: float = 1.0
    """Relative sampling weight in the mixture."""
    field: str | None = None
    """Record field holding the document (default: messages, else text)."""
    split: str = "train"
    """Split of an HF dataset."""


@dataclass
class TokenizerConfig:
    source: str = "bpe"
    """A local tokenizer directory, "qwen3" (packaged Qwen3 tokenizer), or "bpe"/"unigram"
    to train a small one on the training sources (tests, demo)."""
    vocab_size: int = 512
    """Vocabulary of a trained tokenizer."""
    train_docs: int = 2000
    """Documents read to train it."""


@dataclass
class StudentConfig:
    arch: str = "bd3lm"
    """bd3lm (the block-diffusion student) or tiny_moe (train a masked-diffusion MoE
    teacher from scratch with the ce variant)."""
    path: str | None = None
    """Local HF directory of a BD3LM student; None builds one from the sizes below."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Used when ``path`` is None (a checkpoint brings its own tokenizer)."""
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    num_experts: int = 4
    """tiny_moe only."""
    attention: str = "auto"
    """auto (flex attention on CUDA, SDPA otherwise), sdpa or flex_attention."""
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ("bd3lm", "tiny_moe"):
            raise ValueError(f"student.arch={self.arch!r} is not one of ('bd3lm', 'tiny_moe')")


@dataclass
class TeacherConfig:
    kind: str = "tiny_moe"
    """llada2, wedlm, generic or tiny_moe (see README: teacher kinds)."""
    path: str | None = None
    """Local HF directory; None only for tiny_moe (a random in-process teacher)."""
    tokenizer: TokenizerConfig | None = None
    """Teacher tokenizer (cross pipeline); None: the tokenizer in ``path``."""
    sharding: str = "auto"
    """auto (deepspeed with more than one process), deepspeed or none."""
    trust_remote_code: bool | None = None
    """Default from the teacher kind."""
    mask_token_id: int | None = None
    """Override the kind's mask id."""
    hidden_size: int = 64
    """tiny_moe only: the random teacher's sizes."""
    num_layers: int = 2

    def __post_init__(self) -> None:
        if self.sharding not in ("auto", "deepspeed", "none"):
            raise ValueError(f"teacher.sharding={self.sharding!r} is not auto, deepspeed or none")


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    val_sources: list[SourceConfig] = field(default_factory=list)
    max_length: int = 512
    """Student length L (a multiple of the block size)."""
    teacher_max_length: int = 1024
    """Teacher length (cross pipeline)."""
    batch_size: int = 8
    num_workers: int = 2
    pack_text: bool = True
    val_batches: int = 8
    max_doc_chars: int = 1_000_000
    """Documents longer than this many characters are skipped (data/skipped_too_long)."""

    def __post_init__(self) -> None:
        if self.max_doc_chars <= 0:
            raise ValueError(f"data.max_doc_chars must be > 0, got {self.max_doc_chars}")


@dataclass
class ObjectiveConfig:
    variant: str = "tide_shared"
    """ce, kl, reverse_kl, tide_shared, calm, tide_cross or tide_shared_chunk."""
    block_size: int = 32
    temperature: float | None = None
    """None: 2.0 (shared pipeline) or 5.0 (cross)."""
    distill_weight: float = 1.0
    compdemo: bool | None = None
    """None: the variant's default (on for tide_shared and tide_shared_chunk)."""
    compdemo_ratio: float = 0.5
    lambda_init: float = 0.1
    lambda_max: float = 0.9
    lambda_shape: str = "cosine"
    tidal_axis: str = "both"
    time_weight: str = "midrange"
    time_eps: float = 1e-3
    per_block_time: bool = False
    shared_vocab_size: int | None = None


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    max_bad_steps: int = 20
    """Consecutive non-finite steps tolerated before the run stops."""


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    """None: bf16-mixed on GPU, 32-true on CPU."""
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    val_check_interval: int = 100
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 500
    limit_val_batches: int | None = None
    enable_progress_bar: bool = True


@dataclass
class RunConfig:
    pipeline: str = "shared"
    """shared (same tokenizer) or cross (different tokenizers, chunk losses)."""
    seed: int = 0
    run_dir: str = "runs/default"
    """Checkpoints, TensorBoard events and tokenizers; keep it fixed across requeues."""
    resume: str = "auto"
    """auto (latest checkpoint in run_dir if any), never, or a checkpoint path."""
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig | None = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline={self.pipeline!r} is not one of {PIPELINES}")
        variant = get_variant(self.objective.variant, self.pipeline)
        if variant.needs_teacher and self.teacher is None:
            raise ValueError(f"variant {variant.name!r} needs a teacher section")
        if self.data.max_length % self.objective.block_size:
            raise ValueError(
                f"data.max_length={self.data.max_length} is not a multiple of "
                f"objective.block_size={self.objective.block_size}"
            )


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


# ``${stdlib:}`` points configs at the Python standard library's sources (a code corpus
# present on every machine); ``${oc.env:VAR}`` reads environment variables.
if not OmegaConf.has_resolver("stdlib"):
    OmegaConf.register_resolver("stdlib", _stdlib_dir)


class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load YAML (optional) plus dotted ``key=value`` overrides into a validated :class:`RunConfig`.

    Raises:
        ConfigError: unknown key, wrong type or failed check, with the key named.
        FileNotFoundError: the config file does not exist.
    """
    schema = OmegaConf.structured(RunConfig)
    try:
        layers = [schema]
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"config file {str(path)!r} does not exist")
            layers.append(OmegaConf.load(path))
        layers.append(OmegaConf.from_dotlist(list(overrides or [])))
        merged = OmegaConf.merge(*layers)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0] + _where(err)) from None
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _where(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    return f" (key: {key})" if key else ""


def to_yaml(config: RunConfig, comments: bool = False) -> str:
    """The resolved config as YAML (``print-config``, saved beside checkpoints)."""
    del comments  # TODO(issue 10): field docstrings as comments
    return OmegaConf.to_yaml(OmegaConf.structured(config))
