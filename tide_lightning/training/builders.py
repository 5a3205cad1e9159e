"""The one boundary where a :class:`~tide_lightning.config.RunConfig` becomes objects.

Everything downstream (models, data, module, trainer) receives plain arguments or the
one dataclass of its own config group (``ObjectiveConfig``, ``OptimConfig``,
``SourceSpec``), plus what only the run knows as separate arguments (pipeline, step
count, tokenizers); nothing below this file reads the whole ``RunConfig``. The teacher is built lazily by a picklable
:class:`TeacherFactory` inside the LightningModule's ``setup`` hook, because sharding
it needs the process group that Lightning only creates when ``fit`` starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment

from tide_lightning.config import ConfigError, RunConfig, TokenizerConfig
from tide_lightning.data import DistillDataModule, SourceSpec, open_source
from tide_lightning.data.sources import SkipLog
from tide_lightning.data.tokenization import (
    load_qwen3_tokenizer,
    train_byte_level_bpe,
    train_unigram_metaspace,
)
from tide_lightning.method.objective import ObjectiveConfig
from tide_lightning.models import build_student, load_student
from tide_lightning.models.frozen import FrozenTeacher, setup_teacher
from tide_lightning.models.quantization import refuse_four_bit
from tide_lightning.models.teachers import TINY_KINDS, build_tiny_moe_teacher, resolve_mask_id
from tide_lightning.training.callbacks import DataSkipLogger, console_callbacks
from tide_lightning.training.checkpoints import AtomicCheckpointIO, resume_checkpoint
from tide_lightning.training.module import DistillationModule
from tide_lightning.training.preemption import PreemptionCheckpoint
from tide_lightning.training.tensorboard import RunLogger

log = logging.getLogger(__name__)


def _training_texts(specs: list[SourceSpec], limit: int):
    skips = SkipLog(max_warnings=0)
    count = 0
    for spec in specs:
        source = open_source(spec)
        for i in range(len(source)):
            record = source.read(i, skips)
            if record is None:
                continue
            if record.text is not None:
                yield record.text
            else:
                yield from (m["content"] for m in record.messages)
            count += 1
            if count >= limit:
                return


def build_tokenizer(config: TokenizerConfig, sources: list[SourceSpec], cache_dir: Path):
    """A tokenizer from a directory, the packaged Qwen3 one, or trained on ``sources``.

    Trained tokenizers are saved to ``cache_dir`` and reused, so every rank, every
    resume and the exported model see the same vocabulary.
    """
    if config.source == "qwen3":
        return load_qwen3_tokenizer()
    if config.source not in ("bpe", "unigram"):
        return load_tokenizer_dir(config.source)
    if (cache_dir / "tokenizer.json").is_file():
        return load_tokenizer_dir(cache_dir)
    texts = list(_training_texts(sources, config.train_docs))
    train = train_byte_level_bpe if config.source == "bpe" else train_unigram_metaspace
    tokenizer = train(texts, config.vocab_size)
    # Several ranks may train the same tokenizer at once: publish it atomically.
    staging = cache_dir.with_name(f"{cache_dir.name}.tmp{os.getpid()}")
    tokenizer.save_pretrained(str(staging))
    try:
        staging.replace(cache_dir)
    except OSError:  # another rank published first
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def _rows(tokenizer) -> int:
    return -(-len(tokenizer) // 64) * 64


@dataclass(frozen=True)
class TeacherFactory:
    """Builds the frozen (and, with several processes, ZeRO-3 sharded) teacher.

    A checkpoint goes through :func:`~tide_lightning.models.frozen.setup_teacher`; without
    a path, a random tiny teacher is built in-process (tests, quick runs).
    """

    kind: str
    path: str | None
    sharding: str
    block_size: int
    vocab_size: int
    mask_token_id: int | None
    pad_token_id: int | None
    trust_remote_code: bool | None
    hidden_size: int
    num_layers: int
    seed: int
    node_size: int = 1
    """Ranks per node when the ZeRO-3 partition is kept to a node (``shard_group: node``)."""
    load_in_4bit: bool = False
    """Quantize the checkpoint teacher to NF4 at load."""

    def __call__(self) -> FrozenTeacher:
        zero3 = {"node_size": self.node_size}
        if self.path is not None:
            return setup_teacher(
                self.path,
                self.kind,
                sharding=self.sharding,
                block_size=self.block_size,
                trust_remote_code=bool(self.trust_remote_code),
                mask_token_id=self.mask_token_id,
                zero3_options=zero3,
                load_in_4bit=self.load_in_4bit,
            )
        if self.kind not in TINY_KINDS:
            raise ValueError(f"teacher kind {self.kind!r} needs teacher.path")
        adapter = build_tiny_moe_teacher(
            self.vocab_size,
            self.mask_token_id,
            self.pad_token_id,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            seed=self.seed,
            kind=self.kind,
            block_size=self.block_size,
        )
        return setup_teacher(adapter, sharding=self.sharding, zero3_options=zero3)


@dataclass
class Run:
    """Everything ``fit`` and ``validate`` need, built from one config."""

    config: RunConfig
    module: DistillationModule
    datamodule: DistillDataModule
    trainer: L.Trainer
    student_tokenizer: object
    teacher_tokenizer: object | None


def _objective(config: RunConfig) -> ObjectiveConfig:
    """The objective group; an unset ``shared_vocab_size`` becomes the teacher kind's."""
    o = config.objective
    if o.shared_vocab_size is not None or config.teacher is None:
        return o
    from tide_lightning.models.teachers import teacher_kind

    shared = teacher_kind(config.teacher.kind).shared_vocab_size
    return dataclasses.replace(o, shared_vocab_size=shared)


def _student(config: RunConfig, tokenizer):
    s = config.student
    if s.path is not None:
        student, _ = load_student(s.path, attention=s.attention)
    elif s.arch in TINY_KINDS:
        student = build_tiny_moe_teacher(
            _rows(tokenizer),
            tokenizer.mask_token_id,
            tokenizer.pad_token_id,
            hidden_size=s.hidden_size,
            num_layers=s.num_layers,
            num_heads=s.num_heads,
            num_kv_heads=s.num_kv_heads,
            num_experts=s.num_experts,
            seed=config.seed,
            frozen=False,
            kind=s.arch,
            block_size=config.objective.block_size,
        )
    else:
        student = build_student(
            _rows(tokenizer),
            s.hidden_size,
            s.num_layers,
            s.num_heads,
            tokenizer.mask_token_id,
            num_kv_heads=s.num_kv_heads,
            intermediate_size=s.intermediate_size,
            attention=s.attention,
            seed=config.seed,
        )
    if s.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    return student


def teacher_tokenizer_of(
    config: RunConfig, specs: list[SourceSpec], run_dir: Path, student_tok=None
):
    """The teacher's tokenizer: cross pipeline, or the shared pipeline's aligned view.

    The aligned view's teacher shares the student's vocabulary but renders chats with its
    own template; a teacher without a tokenizer of its own (the in-process ``tiny_moe``)
    reads with the student's tokenizer.
    """
    teacher = config.teacher
    aligned = config.pipeline == "shared" and config.data.teacher_view == "aligned"
    if teacher is None or not (config.pipeline == "cross" or aligned):
        return None
    if teacher.tokenizer is not None:
        return build_tokenizer(teacher.tokenizer, specs, run_dir / "teacher_tokenizer")
    if teacher.path is None:
        if aligned and student_tok is not None:
            return student_tok
        raise ValueError("the cross pipeline needs teacher.tokenizer or teacher.path")
    return load_tokenizer_dir(teacher.path)


def build_run(config: RunConfig, callbacks: list | None = None) -> Run:
    """Tokenizers, student, teacher factory, data, module and trainer from ``config``."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    specs = list(config.data.sources)
    if not specs:
        raise ConfigError("data.sources is empty: give at least one training source")
    if config.student.path is not None:  # the checkpoint's own tokenizer, with <|mask|>
        student_tok = load_tokenizer_dir(config.student.path)
    else:
        student_tok = build_tokenizer(
            config.student.tokenizer, specs, run_dir / "student_tokenizer"
        )
    teacher_tok = teacher_tokenizer_of(config, specs, run_dir, student_tok)
    student = _student(config, student_tok)

    factory, teacher_mask = None, None
    variant_needs_teacher = config.objective.variant != "ce"
    if variant_needs_teacher:
        t = config.teacher
        if t.load_in_4bit:
            refuse_four_bit(t.sharding, config.trainer.devices * config.trainer.num_nodes)
        vocab_tok = teacher_tok if teacher_tok is not None else student_tok
        teacher_mask = resolve_mask_id(t.kind, t.path, t.mask_token_id, vocab_tok)
        factory = TeacherFactory(
            t.kind, t.path, t.sharding, config.objective.block_size, _rows(vocab_tok),
            teacher_mask, vocab_tok.pad_token_id, t.trust_remote_code, t.hidden_size,
            t.num_layers, config.seed + 1,
            # one node: the node group is the world, a second partition would only cost memory
            config.trainer.devices if t.shard_group == "node" and config.trainer.num_nodes > 1 else 1,
            t.load_in_4bit,
        )  # fmt: skip

    d = config.data
    datamodule = DistillDataModule(
        specs,
        student_tok,
        val_sources=d.val_sources,
        teacher_tokenizer=teacher_tok,
        pipeline=config.pipeline,
        max_length=d.max_length,
        teacher_max_length=d.teacher_max_length,
        block_size=config.objective.block_size,
        batch_size=d.batch_size,
        num_workers=d.num_workers,
        seed=config.seed,
        pack_text=d.pack_text,
        val_batches=d.val_batches,
        mixing=d.mixing,
        heldout_fraction=d.heldout_fraction,
        max_doc_chars=d.max_doc_chars,
        supervision=d.supervision,
        teacher_view=d.teacher_view,
    )
    total_steps = planned_steps(config, datamodule)
    module = DistillationModule(
        student,
        None,
        _objective(config),
        config.optim,
        pipeline=config.pipeline,
        total_steps=total_steps,
        seed=config.seed,
        teacher_factory=factory,
        teacher_label=teacher_label(config),
        mechanism_metrics=config.trainer.mechanism_metrics,
    )
    trainer = build_trainer(config, callbacks, max_steps=total_steps)
    return Run(config, module, datamodule, trainer, student_tok, teacher_tok)


def load_tokenizer_dir(path: str | Path):
    """A tokenizer saved in a local directory (nothing downloads, never a remote-code prompt)."""
    from tide_lightning.models.loading import load_tokenizer_dir as load

    return load(path)


def planned_steps(config: RunConfig, datamodule: DistillDataModule) -> int:
    """Optimizer steps of the run: ``trainer.max_steps``, or counted from ``trainer.epochs``.

    By epochs, the training records are counted before training (sources opened, filtered
    and carved once, the same views the stream then reads) and turned into steps as a
    distributed epoch is (:func:`~tide_lightning.data.mixing.optimizer_steps`), so the LR
    schedule and TIDAL's progress ``p = step / total`` end exactly at the last step.
    """
    tr = config.trainer
    if tr.epochs is None:
        return tr.max_steps
    from tide_lightning.data.mixing import optimizer_steps
    from tide_lightning.data.selection import count_records

    records = count_records(datamodule.prepared_sources()[0])
    world = tr.devices * tr.num_nodes
    steps = optimizer_steps(
        records, tr.epochs, config.data.batch_size, world, tr.accumulate_grad_batches
    )
    log.info(
        "trainer.epochs=%s over %d training records (batch %d x %d ranks): %d optimizer steps",
        tr.epochs, records, config.data.batch_size, world, steps,
    )  # fmt: skip
    return steps


def build_trainer(
    config: RunConfig, callbacks: list | None = None, max_steps: int | None = None
) -> L.Trainer:
    """A Trainer with TensorBoard logging and step checkpoints in ``run_dir``.

    ``max_steps`` overrides ``trainer.max_steps`` (the count :func:`planned_steps` made).
    """
    tr = config.trainer
    cuda = torch.cuda.is_available() and tr.accelerator in ("auto", "gpu", "cuda")
    precision = tr.precision or ("bf16-mixed" if cuda else "32-true")
    strategy = tr.strategy
    if strategy == "auto" and tr.devices * tr.num_nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    checkpoints = ModelCheckpoint(
        dirpath=str(Path(config.run_dir) / "checkpoints"),
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=tr.checkpoint_every_n_steps,
        # keep_last newest step checkpoints ("step" is always among Lightning's monitor
        # candidates), plus last.ckpt.
        save_top_k=tr.keep_last,
        monitor=None if tr.keep_last == -1 else "step",
        mode="max",
        save_last=True,
        enable_version_counter=False,  # a preemption's last.ckpt is overwritten, not last-v1
    )
    return L.Trainer(
        accelerator=tr.accelerator,
        devices=tr.devices,
        num_nodes=tr.num_nodes,
        strategy=strategy,
        precision=precision,
        max_steps=tr.max_steps if max_steps is None else max_steps,
        gradient_clip_val=tr.gradient_clip_val,
        accumulate_grad_batches=tr.accumulate_grad_batches,
        val_check_interval=tr.val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=tr.limit_val_batches,
        log_every_n_steps=tr.log_every_n_steps,
        enable_progress_bar=tr.enable_progress_bar,
        logger=RunLogger(config.run_dir),
        # Our own parameter count goes in fit's opening line; Lightning's table adds a
        # FLOPs column that reads 0 for these models.
        enable_model_summary=False,
        callbacks=[
            checkpoints,
            LearningRateMonitor("step"),
            DataSkipLogger(),
            *console_callbacks(tr.enable_progress_bar),
            PreemptionCheckpoint(Path(config.run_dir) / "checkpoints" / "last.ckpt"),
            *(callbacks or []),
        ],
        # Lightning's own SLURM requeue saves inside the signal handler, which can hang:
        # PreemptionCheckpoint does it at a step boundary instead.
        # Atomic checkpoint writes: a kill during a save never leaves a torn last.ckpt.
        plugins=[
            AtomicCheckpointIO(),
            *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []),
        ],
        default_root_dir=config.run_dir,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )


def teacher_label(config: RunConfig) -> str:
    """How figures name the teacher: its kind and checkpoint folder."""
    t = config.teacher
    if t is None or config.objective.variant == "ce":
        return "no teacher"
    return f"{t.kind} teacher {Path(t.path).name}" if t.path else f"random {t.kind} teacher"


def resume_path(config: RunConfig) -> str | None:
    """The checkpoint ``fit`` resumes from: ``resume`` = auto (the newest intact one,
    broken ones reported and passed over), never, or a path (it must be intact)."""
    return resume_checkpoint(config.resume, config.run_dir)
