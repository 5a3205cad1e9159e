"""``make demo``: a complete small TIDE distillation on CPU, teachers trained once and cached.

1. A corpus of small generated Python functions is written (:mod:`.demo_corpus`: why not the
   standard library's sources) and two tokenizers of different kinds are trained on it: a
   byte-level BPE for the student, a Unigram/metaspace one for the cross-pipeline teacher.
2. Two Qwen3-MoE masked-diffusion teachers, one per tokenizer, are pretrained with the
   ``ce`` variant, twice as wide, one layer deeper and twice as long than a
   student is trained, each in its pipeline's layout (:data:`TEACHER_KIND`): the BPE
   teacher reads ``[x0 ; xt]`` block by block like WeDLM, the Unigram one reads ``xt``
   fully bidirectionally like LLaDA2. They are cached under ``<out>/teachers/<key>``, the
   key a hash of their configs and of the corpus, so a rerun (and the study) reuses them.
3. A smaller BD3LM student is trained five ways for the same steps on the same data:
   ``ce`` (no teacher), ``kl`` and ``tide_shared`` (against the BPE teacher), ``calm`` and
   ``tide_cross`` (against the Unigram teacher, in chunk space); the shared pipeline's
   token losses use the demo's small-scale settings (:data:`DEMO_SCALE`, :data:`DEMO_TIDAL`).
4. Every model is validated on the held-out programs with the same masks: NELBO, token KL
   to the BPE teacher, chunk KL to the Unigram teacher, and the share of the ``ce``
   student's NELBO gap to the BPE teacher that each student closes.

Why a cache rather than shipped weights: the tokenizers and teachers are a pure function of
the corpus and the config, and the first run trains them in a few minutes, so there is
nothing to download or to keep in sync with the code; a changed recipe changes the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tide_lightning.config import RunConfig, SourceSpec, load_config, to_yaml
from tide_lightning.training.demo_corpus import write_corpus

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "demo.yaml"

TEACHER_RECIPE_VERSION = 2
"""Bump when the teacher recipe changes in a way the hashed configs do not show."""

TEACHER_OVERRIDES = (
    "student.hidden_size=96",
    "student.num_layers=3",
    "student.num_experts=4",
    "objective.variant=ce",
    "teacher=null",
    "pipeline=shared",
)
"""A teacher is trained as the run's model, with these changes to the base config."""

TEACHER_KIND = {"bpe": "tiny_moe_clean_first", "unigram": "tiny_moe"}
"""Each demo teacher's layout, as in the paper's pipelines: the shared-vocabulary teacher
reads ``[x0 ; xt]`` block by block like WeDLM (so it conditions on exactly what the student
sees), the cross-tokenizer one reads ``xt`` fully bidirectionally like LLaDA2."""

TEACHER_STEP_FACTOR = 2
"""Teachers train this many times the students' steps."""

DEMO_SCALE = ("objective.temperature=1.0",)
"""The shared pipeline's token losses at the demo's scale: temperature 1, not the published
2. A 75 K student cannot follow a teacher's distribution softened by T = 2 (forward KL at
T = 2 ends 0.60 nats above ``ce``; at T = 1, 0.14 below: docs/study.md)."""

DEMO_TIDAL = (
    *DEMO_SCALE,
    "objective.tidal_axis=training_only",
    "objective.lambda_init=0.9",
    "objective.lambda_max=0.9",
    "objective.time_weight=uniform",
)
"""TIDAL at the demo's scale: trust 0.9 from the first step, at every t. A student trained
from scratch for 300 steps gains from its teacher early, where the published schedule
(0.1 rising to 0.9, times 1 - t, midrange weight) gives it almost none; the study has the
published schedule and each axis as rows (docs/study.md)."""

STUDENTS = {
    "ce": ("shared", "ce", "bpe", ()),
    "kl": ("shared", "kl", "bpe", DEMO_SCALE),
    "tide_shared": ("shared", "tide_shared", "bpe", DEMO_TIDAL),
    "calm": ("cross", "calm", "unigram", ()),
    "tide_cross": ("cross", "tide_cross", "unigram", ()),
}
"""Demo student -> (pipeline, variant, teacher it learns from, overrides)."""


@dataclass(frozen=True)
class Teachers:
    """The cached teachers of one corpus and config.

    Attributes:
        bpe: the BPE teacher's directory (model and the BPE tokenizer the students use).
        unigram: the Unigram teacher's directory (model and its own tokenizer).
        metrics: ``{"bpe": {"val/ce": ...}, "unigram": {...}}`` from their last validation.
        key: the cache key (hash of configs and corpus).
        trained: whether this call trained them (False: read from the cache).
    """

    bpe: Path
    unigram: Path
    metrics: dict
    key: str
    trained: bool

    def path(self, name: str) -> Path:
        return {"bpe": self.bpe, "unigram": self.unigram}[name]

    @staticmethod
    def kind(name: str) -> str:
        """The teacher kind (layout) of teacher ``name``."""
        return TEACHER_KIND[name]


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _with_corpus(config: RunConfig, train: Path, val: Path) -> RunConfig:
    data = dataclasses.replace(
        config.data,
        sources=[SourceSpec(kind="jsonl", path=str(train.resolve()))],
        val_sources=[SourceSpec(kind="jsonl", path=str(val.resolve()))],
    )
    return dataclasses.replace(config, data=data)


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _teacher_config(
    config_path: Path, name: str, corpus: tuple[Path, Path], base_overrides: list[str]
) -> RunConfig:
    """The config that trains teacher ``name`` (``bpe`` or ``unigram``); run_dir set later."""
    base = load_config(config_path, base_overrides)
    tok_group = "student" if name == "bpe" else "teacher"
    tokenizer = dataclasses.replace(getattr(base, tok_group).tokenizer, source=name)
    steps = base.trainer.max_steps * TEACHER_STEP_FACTOR
    config = load_config(
        config_path,
        [
            *base_overrides,
            *TEACHER_OVERRIDES,
            f"student.arch={TEACHER_KIND[name]}",
            "run_dir=teacher",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            f"trainer.checkpoint_every_n_steps={steps}",
        ],
    )
    config = dataclasses.replace(
        config, student=dataclasses.replace(config.student, tokenizer=tokenizer)
    )
    return _with_corpus(config, *corpus)


def teacher_key(configs: dict[str, RunConfig], corpus: tuple[Path, Path]) -> str:
    """Cache key: the teachers' full configs (run_dir aside) and the corpus bytes."""
    digest = hashlib.sha256(f"recipe {TEACHER_RECIPE_VERSION}\n".encode())
    for name in sorted(configs):
        config = dataclasses.replace(configs[name], run_dir="teacher")
        text = to_yaml(config)
        for path in corpus:  # the corpus paths differ per out folder; their bytes count
            text = text.replace(str(path.resolve()), path.name)
        digest.update(text.encode())
    for path in corpus:
        digest.update(_file_hash(path).encode())
    return digest.hexdigest()[:12]


def ensure_teachers(
    out_dir: Path, config_path: Path = DEMO_CONFIG, base_overrides: list[str] | None = None
) -> Teachers:
    """The two demo teachers for ``config_path``'s corpus: from the cache, or trained now.

    The cache entry is ``out_dir/teachers/<key>/`` with ``bpe/``, ``unigram/`` (saved
    models with their tokenizers), ``runs/`` (the training runs, TensorBoard included) and
    ``teachers.json`` (validation metrics), written last: an entry without it is retrained.
    """
    from tide_lightning.training.run import fit

    corpus = write_corpus(out_dir / "corpus")
    base = list(base_overrides or [])
    configs = {
        name: _teacher_config(config_path, name, corpus, base) for name in ("bpe", "unigram")
    }
    key = teacher_key(configs, corpus)
    root = out_dir / "teachers" / key
    done = root / "teachers.json"
    if done.is_file():
        print(f"teachers: cached in {root} (key {key})", flush=True)
        metrics = json.loads(done.read_text())
        return Teachers(root / "bpe", root / "unigram", metrics, key, trained=False)
    metrics = {}
    for name, config in configs.items():
        run_dir = root / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted entry starts over
        config = dataclasses.replace(config, run_dir=str(run_dir))
        _banner(f"pretraining the {name} MoE teacher (ce, {config.trainer.max_steps} steps)")
        run = fit(config)
        run.module.student.save_pretrained(root / name, run.student_tokenizer)
        metrics[name] = {
            k: float(v) for k, v in run.trainer.callback_metrics.items() if k.startswith("val/")
        }
    done.write_text(json.dumps(metrics, indent=2) + "\n")
    return Teachers(root / "bpe", root / "unigram", metrics, key, trained=True)


def student_config(
    config_path: Path,
    teachers: Teachers,
    run_dir: Path,
    pipeline: str,
    variant: str,
    teacher: str,
    overrides: tuple[str, ...] | list[str] = (),
) -> RunConfig:
    """One student run of the demo or the study, on the cached teachers and corpus.

    The pipeline and variant go in as overrides, so the per-pipeline defaults (e.g. the
    cross pipeline's temperature 5) resolve for them at load.
    """
    return load_config(
        config_path,
        [
            f"run_dir={run_dir}",
            f"pipeline={pipeline}",
            f"objective.variant={variant}",
            f"student.tokenizer.source={teachers.bpe}",
            f"teacher.path={teachers.path(teacher)}",
            f"teacher.kind={teachers.kind(teacher)}",
            "teacher.tokenizer=null",
            *overrides,
        ],
    )


def _corpus_paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / "corpus" / "train.jsonl", out_dir / "corpus" / "val.jsonl"


PROBES = (("shared", "kl", "bpe"), ("cross", "tide_cross", "unigram"))
"""Validation passes of every student: token KL to the BPE teacher (its NELBO too) and
chunk KL to the Unigram teacher, on the same held-out programs and fixed masks."""


def probe(
    config_path: Path,
    teachers: Teachers,
    corpus: tuple[Path, Path],
    run_dir: Path,
    ckpt: Path,
    overrides: tuple[str, ...] | list[str] = (),
) -> dict[str, float]:
    """``val/ce``, ``val/kl_to_teacher`` and ``val/chunk_kl`` of one student checkpoint."""

    row = {}
    for pipeline, variant, teacher in PROBES:
        config = student_config(
            config_path, teachers, run_dir, pipeline, variant, teacher,
            [*overrides, "trainer.enable_progress_bar=false"],
        )  # fmt: skip
        metrics = _validate(_with_corpus(config, *corpus), ckpt, name=f"probe_{pipeline}")
        if pipeline == "cross":  # the NELBO is the shared pipeline's (plain masks)
            metrics.pop("val/ce", None)
        row.update({k: float(v) for k, v in metrics.items() if k.startswith("val/")})
    return row


def _validate(config: RunConfig, ckpt: Path, name: str) -> dict[str, float]:
    """``validate`` (same scalars and TensorBoard folder), returning the ``val/*`` values.

    Read from the trainer's callback metrics: the list ``Trainer.validate`` returns leaves
    out scalars logged with ``logger=False``, which is how the module logs them.
    """
    from tide_lightning.training.builders import build_run
    from tide_lightning.training.run import quiet_third_party, resolved
    from tide_lightning.training.tensorboard import RunLogger

    quiet_third_party()
    run = build_run(resolved(config))
    run.trainer.logger = RunLogger(config.run_dir, version=name)
    run.trainer.validate(run.module, datamodule=run.datamodule, ckpt_path=str(ckpt))
    metrics = run.trainer.callback_metrics
    return {k: float(v) for k, v in metrics.items() if k.startswith("val/")}


def train_student(
    config_path: Path,
    teachers: Teachers,
    out_dir: Path,
    run_dir: Path,
    spec: tuple[str, str, str],
    overrides: tuple[str, ...] | list[str] = (),
    student_docs: int | None = None,
) -> dict[str, float]:
    """Train one student (resuming an interrupted run) and probe its last checkpoint.

    ``student_docs`` trains on the first that many training programs only (the teachers
    saw all of them): the low-data regime where a teacher knows what the student's data
    does not show. Validation is the same held-out file either way.
    """
    from tide_lightning.training.run import fit

    corpus = _corpus_paths(out_dir)
    train = corpus[0]
    if student_docs is not None:
        train = out_dir / "corpus" / f"train_first{student_docs}.jsonl"
        lines = corpus[0].read_text(encoding="utf-8").splitlines(keepends=True)
        train.write_text("".join(lines[:student_docs]), encoding="utf-8")
    pipeline, variant, teacher = spec
    config = student_config(config_path, teachers, run_dir, pipeline, variant, teacher, overrides)
    fit(_with_corpus(config, train, corpus[1]))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    return probe(config_path, teachers, corpus, run_dir, ckpt, overrides)


def gap_closed(nelbo: float, ce: float, teacher: float) -> float:
    """Share of the ``ce`` student's NELBO gap to the teacher that ``nelbo`` closes."""
    gap = ce - teacher
    return (ce - nelbo) / gap if gap > 0 else math.nan


def one_thread() -> None:
    """One intra-op thread unless ``OMP_NUM_THREADS`` says otherwise.

    The demo's models are tiny: a second thread barely speeds a step on an idle 2-core
    machine, and on a busy one threads that wait for each other make a step ~10x slower
    (measured: the 294 K teacher at 7 steps/s on one thread, 1.2 s/step on two, same load).
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def run_demo(
    out: str = "runs/demo", steps: int | None = None, config_path: Path = DEMO_CONFIG
) -> dict:
    """Run the whole demo; returns ``{row: {metric: value}}`` and prints the table."""
    started = time.perf_counter()
    one_thread()
    out_dir = Path(out).resolve()
    base = steps_overrides(steps)
    teachers = ensure_teachers(out_dir, config_path, base)
    table = {
        "teacher_bpe": {"val/ce": teachers.metrics["bpe"].get("val/ce", math.nan)},
        "teacher_unigram": {"val/ce": teachers.metrics["unigram"].get("val/ce", math.nan)},
    }
    for name, (pipeline, variant, teacher, overrides) in STUDENTS.items():
        _banner(f"training the {name} student ({variant}, {pipeline} pipeline)")
        run_dir = out_dir / f"student_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a demo run trains its students afresh
        table[name] = train_student(
            config_path, teachers, out_dir, run_dir, (pipeline, variant, teacher),
            [*base, *overrides],
        )  # fmt: skip
    print_table(table, out_dir, time.perf_counter() - started, teachers)
    return table


def steps_overrides(steps: int | None) -> list[str]:
    """Overrides that train for ``steps`` and validate and checkpoint at the end."""
    if steps is None:
        return []
    keys = ("max_steps", "val_check_interval", "checkpoint_every_n_steps")
    return [f"trainer.{key}={steps}" for key in keys]


def format_table(table: dict, spread: dict | None = None) -> str:
    """The demo's (or a study's) markdown table; ``spread`` adds "+- std" to each cell."""
    ce = table.get("ce", {}).get("val/ce", math.nan)
    teacher = table.get("teacher_bpe", {}).get("val/ce", math.nan)
    lines = [
        "| model | NELBO | KL to BPE teacher | chunk KL to Unigram teacher | gap closed |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        cells = []
        for key in ("val/ce", "val/kl_to_teacher", "val/chunk_kl"):
            value = row.get(key, math.nan)
            cell = "-" if math.isnan(value) else f"{value:.3f}"
            if spread is not None and not math.isnan(spread.get(name, {}).get(key, math.nan)):
                cell += f" +- {spread[name][key]:.3f}"
            cells.append(cell)
        closed = "-"
        if not name.startswith("teacher") and name != "ce":
            share = gap_closed(row.get("val/ce", math.nan), ce, teacher)
            closed = "-" if math.isnan(share) else f"{share:+.0%}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {closed} |")
    return "\n".join(lines)


def print_table(table: dict, out_dir: Path, seconds: float, teachers: Teachers) -> None:
    how = "trained now" if teachers.trained else "from the cache"
    print(
        f"\nDemo finished in {seconds / 60:.1f} min (teachers {how}, key {teachers.key}). "
        "Validation on held-out programs, same masks for every model:\n"
    )
    print(format_table(table))
    print(
        "\nNELBO in nats per BPE token, except teacher_unigram's (per Unigram token); the "
        "BPE teacher and students are scored block by block (the BPE teacher reads [x0 ; xt] like "
        "WeDLM), the Unigram teacher fully bidirectionally (like LLaDA2).\n"
        f"kl and tide_shared use the demo's small-scale settings: {' '.join(DEMO_TIDAL)} "
        "(kl: the temperature only; docs/study.md).\n"
        "gap closed = (NELBO of ce - NELBO of the student) / (NELBO of ce - NELBO of "
        "teacher_bpe)."
    )
    print(f"\nTensorBoard: .venv/bin/tensorboard --logdir {out_dir}")
