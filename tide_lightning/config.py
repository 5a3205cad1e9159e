"""Structured configs: OmegaConf YAML validated against typed dataclasses, one per group.

Everything is checked when the config loads, before any work: an unknown or mistyped key
fails with its name (OmegaConf's structured-config checks); a value outside its choices or
range fails in its group's ``__post_init__``; cross-group rules live in
:class:`RunConfig`. All of them raise :class:`~tide_lightning.errors.ConfigError`, which
the CLI prints as one line (``error: data.batch_size must be >= 1, got 0``, exit 2).

Choice fields are plain strings (the YAML stays ``lambda_shape: cosine``) checked against
the registry that implements them (variants, schedules, source kinds) or, where the
registry would import transformers at load time (teacher kinds, attention back-ends), a
tuple declared here that a test keeps equal to the registry.

No value is replaced behind the user's back: ``None`` means "the default for this
pipeline/variant" and is resolved at load (:meth:`ObjectiveConfig.resolved`), so
``print-config`` shows the effective values.

Each group is the one dataclass the code below receives; nothing else mirrors its fields.
The ``objective`` group lives in :mod:`tide_lightning.method.objective` (the method package
never imports this module) and is re-used here; :class:`SourceSpec` is defined here and
re-exported by :mod:`tide_lightning.data.sources` (importing the data package would pull in
Lightning and transformers, seconds of start-up for ``print-config``). Configs stop at
:mod:`tide_lightning.training.builders`, which passes the groups on, plus what only the run
knows (pipeline, step count, mask ids), as separate arguments.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sysconfig
import textwrap
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tide_lightning.errors import ConfigError, require, require_choice
from tide_lightning.method.alignment.chat import SUPERVISION
from tide_lightning.method.objective import ObjectiveConfig
from tide_lightning.method.variants import PIPELINES

__all__ = [
    "ConfigError",
    "DataConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "RunConfig",
    "SourceSpec",
    "StudentConfig",
    "TeacherConfig",
    "TokenizerConfig",
    "TrainerConfig",
    "load_config",
    "to_yaml",
]

SOURCE_KINDS = ("jsonl", "parquet", "text", "code", "hf")
"""Data source kinds (:mod:`tide_lightning.data.sources` reads each)."""
CODE_SUFFIXES = (".py", ".c", ".h", ".cpp", ".rs", ".go", ".js", ".ts", ".java", ".sh")
"""File endings a ``code`` directory source keeps by default."""
TINY_TEACHER_KINDS = ("tiny_moe", "tiny_moe_clean_first")
"""Teacher kinds built in-process (no checkpoint needed); also student architectures."""
TEACHER_KINDS = ("llada2", "wedlm", "generic", *TINY_TEACHER_KINDS)
"""The keys of :data:`tide_lightning.models.teachers.TEACHER_KINDS` (a test keeps them equal;
spelled out so that loading a config does not import transformers)."""
STUDENT_ARCHS = ("bd3lm", *TINY_TEACHER_KINDS)
ATTENTION = ("auto", "sdpa", "flex")
"""What :func:`tide_lightning.models.student.resolve_attention` accepts."""
TEACHER_SHARDING = ("auto", "deepspeed", "none")
TEACHER_SHARD_GROUPS = ("world", "node")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
"""Lightning precision names this application is meant to run with."""
MIXING_MODES = ("weighted", "concat")
"""As :data:`tide_lightning.data.mixing.MIXING_MODES` (a test keeps them equal)."""
TEACHER_VIEWS = ("same_sequence", "aligned")
"""As :data:`tide_lightning.data.examples.TEACHER_VIEWS` (a test keeps them equal)."""
MAX_SEED = 2**32 - 1  # Lightning's seed_everything range


@dataclass(frozen=True)
class SourceSpec:
    """One corpus of the training (or validation) mixture, as :mod:`tide_lightning.data`
    reads it (``SourceSpec("jsonl", "/data/*.jsonl", weight=2.0)`` outside a config)."""

    kind: str = MISSING
    """jsonl, parquet, text (one document per file), code (one per code file) or hf."""
    path: str = MISSING
    """File, directory (its kind's files below it), glob (** recurses), or HF dataset name."""
    weight: float = 1.0
    """Relative sampling weight in the mixture (> 0)."""
    field: str | None = None
    """Record field holding the document; None: messages (a chat) if present, else text."""
    split: str = "train"
    """Split of an HF dataset (kind hf only)."""
    suffixes: tuple[str, ...] = CODE_SUFFIXES
    """File endings a code directory keeps."""
    assistant_contains: str | None = None
    """Keep only records whose last assistant reply (or text) contains this (OpenCoder
    [lang:python]: "python"); None keeps every record."""

    def __post_init__(self) -> None:
        require_choice(f"data source {self.path}: kind", self.kind, SOURCE_KINDS)
        require(self.weight > 0, f"data source {self.path}: weight", "> 0", self.weight)


@dataclass
class TokenizerConfig:
    """Where a tokenizer comes from (loaded, or trained on the training sources)."""

    source: str = "bpe"
    """A local tokenizer directory, "qwen3" (packaged Qwen3 tokenizer), or "bpe"/"unigram"
    to train a small one on the training sources (tests, demo)."""
    vocab_size: int = 512
    """Vocabulary of a trained tokenizer (>= 64)."""
    train_docs: int = 2000
    """Documents read to train it (> 0)."""

    def __post_init__(self) -> None:
        require(self.vocab_size >= 64, "tokenizer.vocab_size", ">= 64", self.vocab_size)
        require(self.train_docs > 0, "tokenizer.train_docs", "> 0", self.train_docs)


@dataclass
class StudentConfig:
    """The block-diffusion student: a checkpoint, or built from the sizes below."""

    arch: str = "bd3lm"
    """bd3lm (the block-diffusion student), or a small Qwen3-MoE to train as a teacher from
    scratch with the ce variant: tiny_moe (fully bidirectional over xt, LLaDA2's mode) or
    tiny_moe_clean_first ([x0 ; xt] block by block, WeDLM's mode: it conditions on what
    the student sees)."""
    path: str | None = None
    """Local HF directory of a BD3LM student; None builds one from the sizes below."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Used when path is None (a checkpoint brings its own tokenizer)."""
    hidden_size: int = 64
    """Model width of a built student (a multiple of num_heads)."""
    num_layers: int = 2
    """Decoder layers of a built student."""
    num_heads: int = 4
    """Query heads of a built student."""
    num_kv_heads: int = 2
    """Key/value heads of a built student (divides num_heads)."""
    intermediate_size: int = 128
    """MLP width of a built student."""
    num_experts: int = 4
    """Experts per MoE layer (tiny_moe only)."""
    attention: str = "auto"
    """auto (flex attention for training on CUDA, SDPA otherwise), sdpa, or flex (CUDA)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more time)."""

    def __post_init__(self) -> None:
        require_choice("student.arch", self.arch, STUDENT_ARCHS)
        require_choice("student.attention", self.attention, ATTENTION)
        for key in ("hidden_size", "num_layers", "num_heads", "num_kv_heads"):
            require(getattr(self, key) > 0, f"student.{key}", "> 0", getattr(self, key))
        for key in ("intermediate_size", "num_experts"):
            require(getattr(self, key) > 0, f"student.{key}", "> 0", getattr(self, key))
        require(
            self.num_heads % self.num_kv_heads == 0,
            "student.num_kv_heads",
            f"a divisor of student.num_heads={self.num_heads}",
            self.num_kv_heads,
        )
        require(
            self.hidden_size % self.num_heads == 0,
            "student.hidden_size",
            f"a multiple of student.num_heads={self.num_heads}",
            self.hidden_size,
        )


@dataclass
class TeacherConfig:
    """The frozen teacher."""

    kind: str = "tiny_moe"
    """llada2, wedlm, generic, tiny_moe or tiny_moe_clean_first (README: teacher kinds)."""
    path: str | None = None
    """Local HF directory; None only for the tiny kinds (a random in-process teacher)."""
    tokenizer: TokenizerConfig | None = None
    """Teacher tokenizer (cross pipeline); None: the tokenizer in path."""
    sharding: str = "auto"
    """auto (deepspeed with more than one process), deepspeed (ZeRO-3) or none."""
    shard_group: str = "world"
    """ZeRO-3 teacher partition: world (1/W per rank; gathers cross nodes) or node (hpZ: an
    extra 1/G copy per rank, every gather inside the node; `plan` shows both)."""
    trust_remote_code: bool | None = None
    """Run the checkpoint's own modeling code; None: the teacher kind's default."""
    mask_token_id: int | None = None
    """Override the kind's mask id (>= 0); None: the kind's, config.json's or tokenizer's."""
    hidden_size: int = 64
    """Width of the random tiny teacher."""
    num_layers: int = 2
    """Layers of the random tiny teacher."""
    load_in_4bit: bool = False
    """Load the teacher in 4-bit NF4 (the published --teacher_load_in_4bit); needs CUDA,
    bitsandbytes and sharding none (tide_lightning.models.quantization)."""

    def __post_init__(self) -> None:
        require_choice("teacher.kind", self.kind, TEACHER_KINDS)
        require_choice("teacher.sharding", self.sharding, TEACHER_SHARDING)
        require_choice("teacher.shard_group", self.shard_group, TEACHER_SHARD_GROUPS)
        m = self.mask_token_id
        require(m is None or m >= 0, "teacher.mask_token_id", ">= 0 (or null)", m)
        require(self.hidden_size > 0, "teacher.hidden_size", "> 0", self.hidden_size)
        require(self.num_layers > 0, "teacher.num_layers", "> 0", self.num_layers)


@dataclass
class DataConfig:
    """Sources, lengths and batching."""

    sources: list[SourceSpec] = field(default_factory=list)
    """Training corpora (at least one for fit)."""
    val_sources: list[SourceSpec] = field(default_factory=list)
    """Validation corpora; empty: see heldout_fraction."""
    max_length: int = 512
    """Student length L (a multiple of objective.block_size)."""
    teacher_max_length: int = 1024
    """Teacher length: the cross teacher's, and the aligned shared view's (then a multiple
    of objective.block_size; published WeDLM runs: 768)."""
    supervision: str = "last_turn"
    """Chat records: last_turn (only the final assistant turn and its end-of-turn token are
    supervised, everything before is prompt: the published SFT) or all_turns."""
    teacher_view: str = "same_sequence"
    """Shared pipeline: same_sequence (the teacher reads the student's tokens; for a teacher
    with the student's chat template) or aligned (the teacher renders chats with its own
    tokenizer and template; token losses at aligned answer tokens: the published
    *_aligned modes)."""
    batch_size: int = 8
    """Sequences per rank and micro-batch (>= 1)."""
    num_workers: int = 2
    """Data-loader worker processes per rank (0: in the training process)."""
    pack_text: bool = True
    """Pack plain-text documents into full-length rows (chats are never packed)."""
    val_batches: int = 8
    """Validation batches per rank (>= 1), the same on every rank."""
    mixing: str = "weighted"
    """weighted (by each source's weight) or concat (in proportion to size, each record
    once per epoch: the published recipe)."""
    heldout_fraction: float = 0.0
    """Without val_sources, this share of every training source is held out for validation
    (published: 0.05); 0 holds nothing out."""
    max_doc_chars: int = 1_000_000
    """Documents longer than this many characters are skipped (data/skipped_too_long)."""

    def __post_init__(self) -> None:
        require(self.max_length > 0, "data.max_length", "> 0", self.max_length)
        t = self.teacher_max_length
        require(t > 0, "data.teacher_max_length", "> 0", t)
        require(self.batch_size >= 1, "data.batch_size", ">= 1", self.batch_size)
        require(self.num_workers >= 0, "data.num_workers", ">= 0", self.num_workers)
        require(self.val_batches >= 1, "data.val_batches", ">= 1", self.val_batches)
        require_choice("data.mixing", self.mixing, MIXING_MODES)
        require_choice("data.supervision", self.supervision, SUPERVISION)
        require_choice("data.teacher_view", self.teacher_view, TEACHER_VIEWS)
        h = self.heldout_fraction
        require(0.0 <= h < 1.0, "data.heldout_fraction", "in [0, 1)", h)
        m = self.max_doc_chars
        require(m > 0, "data.max_doc_chars", "> 0", m)


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then cosine decay over the run's optimizer steps."""

    lr: float = 5e-5
    """Peak learning rate (> 0)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (>= 0)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's two moment decay rates, each in [0, 1)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming up linearly from 0, in [0, 1)."""
    min_lr_ratio: float = 0.0
    """Final learning rate as a share of lr, in [0, 1]."""
    max_bad_steps: int = 20
    """Consecutive non-finite steps tolerated before the run stops (>= 0)."""

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", "> 0", self.lr)
        require(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        b = list(self.betas)
        require(len(b) == 2 and all(0 <= x < 1 for x in b), "optim.betas", "two in [0, 1)", b)
        w = self.warmup_ratio
        require(0 <= w < 1, "optim.warmup_ratio", "in [0, 1)", w)
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        require(self.max_bad_steps >= 0, "optim.max_bad_steps", ">= 0", self.max_bad_steps)


@dataclass
class TrainerConfig:
    """The Lightning Trainer: hardware, length of the run, logging and checkpoints."""

    max_steps: int | None = 1000
    """Optimizer steps (> 0); null when training by trainer.epochs."""
    epochs: float | None = None
    """Passes over the training records; the step count (and so the LR and lambda
    progress) is computed from the record count before training. Needs max_steps: null."""
    accelerator: str = "auto"
    """auto, cpu, gpu, cuda, mps or tpu."""
    devices: int = 1
    """Processes (GPUs) per node (>= 1)."""
    num_nodes: int = 1
    """Nodes (>= 1)."""
    strategy: str = "auto"
    """Lightning strategy name (ddp, fsdp, ...); auto: DDP with more than one process."""
    precision: str | None = None
    """32-true, bf16-mixed, 16-mixed, bf16-true, 16-true or 64-true; None: bf16-mixed on
    GPU, 32-true on CPU (decided on the machine that trains)."""
    gradient_clip_val: float = 1.0
    """Gradient-norm clipping threshold (>= 0; 0 disables)."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step (>= 1)."""
    val_check_interval: int = 100
    """Optimizer steps between validations (>= 1)."""
    log_every_n_steps: int = 1
    """Steps between logged training scalars (>= 1)."""
    checkpoint_every_n_steps: int = 500
    """Steps between step checkpoints (>= 1); last.ckpt is also written on preemption."""
    limit_val_batches: int | None = None
    """Cap on validation batches (>= 0); None: data.val_batches."""
    enable_progress_bar: bool = True
    """Lightning's progress bar on stdout."""
    keep_last: int = 3
    """Step checkpoints kept (the newest ones), plus last.ckpt; -1 keeps every one."""
    mechanism_metrics: bool = True
    """With a teacher, log the paper's mechanisms (mech/*, train/distill_grad_norm; README:
    TensorBoard); costs a teacher call of 3x the rows per batch of a process's first validation."""

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.max_steps is None):
            raise ConfigError(
                "set exactly one of trainer.max_steps and trainer.epochs "
                f"(got max_steps={self.max_steps}, epochs={self.epochs}); "
                "to train by epochs set max_steps: null"
            )
        s, e = self.max_steps, self.epochs
        require(s is None or s > 0, "trainer.max_steps", "> 0 (or null)", s)
        require(e is None or e > 0, "trainer.epochs", "> 0 (or null)", e)
        require_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        if self.strategy != "auto":  # only then is Lightning imported, to read its registry
            from lightning.pytorch.strategies import StrategyRegistry

            names = ("auto", *sorted(StrategyRegistry.available_strategies()))
            require_choice("trainer.strategy", self.strategy, names)
        if self.precision is not None:
            require_choice("trainer.precision", self.precision, PRECISIONS)
        for key in (
            "devices",
            "num_nodes",
            "accumulate_grad_batches",
            "val_check_interval",
            "log_every_n_steps",
            "checkpoint_every_n_steps",
        ):
            require(getattr(self, key) >= 1, f"trainer.{key}", ">= 1", getattr(self, key))
        g = self.gradient_clip_val
        require(g >= 0, "trainer.gradient_clip_val", ">= 0", g)
        v = self.limit_val_batches
        require(v is None or v >= 0, "trainer.limit_val_batches", ">= 0 (or null)", v)
        k = self.keep_last
        require(k >= 1 or k == -1, "trainer.keep_last", ">= 1 or -1 (keep all)", k)


@dataclass
class RunConfig:
    """One run: what to train, against which teacher, on what data, how."""

    pipeline: str = "shared"
    """shared (same tokenizer) or cross (different tokenizers, chunk losses)."""
    seed: int = 0
    """Seed of initialisation, data order and masks, in [0, 2**32 - 1]."""
    run_dir: str = "runs/default"
    """Checkpoints, TensorBoard events and tokenizers; keep it fixed across requeues."""
    resume: str = "auto"
    """auto (latest checkpoint in run_dir if any), never, or a checkpoint path."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """The model being trained."""
    teacher: TeacherConfig | None = field(default_factory=TeacherConfig)
    """The frozen teacher; null only for the ce variant in the shared pipeline."""
    data: DataConfig = field(default_factory=DataConfig)
    """Sources, lengths and batching."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """The training objective (variant, TIDAL, CompDemo; docs/method.md)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Hardware, run length, logging and checkpoints."""

    def __post_init__(self) -> None:
        require_choice("pipeline", self.pipeline, PIPELINES)
        require(0 <= self.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}]", self.seed)
        require(bool(self.run_dir), "run_dir", "a directory", self.run_dir)
        # The per-pipeline defaults become the values the run uses (print-config shows them).
        self.objective = self.objective.resolved(self.pipeline)
        variant = self.objective.spec
        teacher = self.teacher
        if teacher is None:
            if variant.needs_teacher:
                raise ConfigError(f"teacher: objective.variant={variant.name} needs a teacher")
            if self.pipeline == "cross":
                raise ConfigError("teacher: the cross pipeline needs a teacher (its tokenizer)")
        elif (
            variant.needs_teacher
            and teacher.path is None
            and teacher.kind not in TINY_TEACHER_KINDS
        ):
            raise ConfigError(f"teacher.path is required for teacher.kind={teacher.kind}")
        cross = self.pipeline == "cross"
        if cross and teacher is not None and teacher.tokenizer is None and teacher.path is None:
            raise ConfigError("teacher.tokenizer or teacher.path is required (cross pipeline)")
        block = self.objective.block_size
        require(
            self.data.max_length % block == 0,
            "data.max_length",
            f"a multiple of objective.block_size={block}",
            self.data.max_length,
        )
        if self.data.teacher_view == "aligned":
            require(
                not cross, "data.teacher_view", "same_sequence in the cross pipeline", "aligned"
            )
            require(
                self.data.teacher_max_length % block == 0,
                "data.teacher_max_length",
                f"a multiple of objective.block_size={block} (aligned teacher view)",
                self.data.teacher_max_length,
            )


def _stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


# ``${stdlib:}`` points configs at the Python standard library's sources (a code corpus
# present on every machine); ``${oc.env:VAR}`` reads environment variables.
if not OmegaConf.has_resolver("stdlib"):
    OmegaConf.register_resolver("stdlib", _stdlib_dir)


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
        unset = re.search(r"Environment variable '(\w+)' not found", str(err))
        if unset:  # the cluster configs read their paths from the environment
            raise ConfigError(
                f"environment variable {unset.group(1)} is not set{_where(err)}: export it "
                f"(the config's header says what it points to) or override the key"
            ) from None
        raise ConfigError(str(err).splitlines()[0] + _where(err)) from None
    except ConfigError:
        raise
    except ValueError as err:  # a registry lookup below a check
        raise ConfigError(str(err)) from None


def _where(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    return f" (key: {key})" if key else ""


def to_yaml(config: RunConfig, comments: bool = False) -> str:
    """The resolved config as YAML (``print-config``, saved beside checkpoints).

    Args:
        config: a loaded config (its per-pipeline defaults already resolved).
        comments: put each field's docstring, on one line, as a comment above the field.

    Returns:
        YAML that :func:`load_config` reads back to an equal config.
    """
    if not comments:
        return OmegaConf.to_yaml(OmegaConf.structured(config))
    return "\n".join(_commented(config, 0)) + "\n"


def _commented(obj: object, indent: int) -> list[str]:
    """YAML lines of a dataclass, each field preceded by its docstring as a comment."""
    pad = " " * indent
    docs = field_docs(type(obj))
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if docs.get(f.name):
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines += _commented(value, indent + 2)
        elif isinstance(value, (list, tuple)) and value and dataclasses.is_dataclass(value[0]):
            lines.append(f"{pad}{f.name}:")
            for item in value:
                body = _commented(item, indent + 4)
                first = next(i for i, line in enumerate(body) if not line.lstrip().startswith("#"))
                body[first] = f"{pad}  - {body[first].lstrip()}"
                lines += [f"{pad}  {line.lstrip()}" for line in body[:first]] + body[first:]
        else:
            lines.append(f"{pad}{f.name}: {_scalar(value)}")
    return lines


def _scalar(value: object) -> str:
    """One YAML flow value (lists of plain values inline), quoted as OmegaConf would."""
    if isinstance(value, tuple):
        value = list(value)
    text = OmegaConf.to_yaml(OmegaConf.create({"v": value}))
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    return text.removeprefix("v:").strip()


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring on one line}`` of a dataclass, read from its source.

    Python keeps no docstring for a field; the string literal right under it is the
    convention this project uses, so the class's source is parsed for it.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs
