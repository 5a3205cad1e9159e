"""``study``: the demo's students and the paper's ablations, several seeds each, on CPU.

A grid file (``conf/study/grid.yaml``) names the variants: each is a demo student (pipeline,
variant, which teacher) plus dotted overrides, so every ablation is a configuration (TIDAL
axis, CompDemo on/off, temperature, CALM / Reverse CALM / chunk TIDAL). Every run gets its
own folder ``<out>/runs/<variant>-s<seed>`` (TensorBoard with its hyperparameters, so the
HParams view compares them) and, once validated, a ``result.json``. A rerun skips the runs
that have one and resumes an interrupted run from its last checkpoint, so a study stopped
at any point continues where it stopped. The teachers come from the demo's cache
(:func:`~tide_lightning.training.demo.ensure_teachers`), trained there first if missing.

Outputs: ``<out>/study.md`` (mean and standard deviation over seeds) and ``<out>/study.png``
(validation NELBO and KL per variant, one dot per seed).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from tide_lightning.errors import UserError
from tide_lightning.training import demo

GRID = Path(__file__).resolve().parents[2] / "conf" / "study" / "grid.yaml"
METRICS = ("val/ce", "val/kl_to_teacher", "val/chunk_kl")
PIPELINES = {"shared": "bpe", "cross": "unigram"}


@dataclass(frozen=True)
class Variant:
    """One row of the grid: a demo student plus overrides.

    Attributes:
        name: the row's name (folder ``<name>-s<seed>``).
        pipeline: ``shared`` (BPE teacher) or ``cross`` (Unigram teacher).
        variant: ``objective.variant``.
        overrides: dotted ``key=value`` overrides of the base config.
        student_docs: train on the first that many programs only (None: all of them).
    """

    name: str
    pipeline: str
    variant: str
    overrides: tuple[str, ...] = ()
    student_docs: int | None = None

    @property
    def spec(self) -> tuple[str, str, str]:
        return self.pipeline, self.variant, PIPELINES[self.pipeline]


@dataclass(frozen=True)
class Grid:
    """What the study runs: variants, seeds and the students' steps (None: the config's)."""

    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    steps: int | None = None
    teacher_steps: int | None = field(default=None)


def load_grid(path: Path = GRID, quick: bool = False) -> Grid:
    """Read a grid file; ``quick`` applies its ``quick:`` section (fewer steps/variants/seeds).

    Raises:
        UserError: a missing file, an unknown pipeline, or a quick variant not in the grid.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study grid {path} does not exist")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    variants = []
    for name, row in raw.get("variants", {}).items():
        pipeline = row.get("pipeline", "shared")
        if pipeline not in PIPELINES:
            raise UserError(f"{path}: variants.{name}.pipeline must be shared or cross")
        overrides = tuple(str(o) for o in row.get("overrides", []))
        docs = row.get("student_docs")
        if docs is not None and (not isinstance(docs, int) or docs < 1):
            raise UserError(f"{path}: variants.{name}.student_docs must be a positive integer")
        variant = str(row.get("variant", name))
        variants.append(Variant(name, pipeline, variant, overrides, docs))
    if not variants:
        raise UserError(f"{path}: no variants")
    seeds, steps = raw.get("seeds", [0]), raw.get("steps")
    teacher_steps = None
    if quick:
        q = raw.get("quick", {})
        wanted = q.get("variants", [v.name for v in variants])
        unknown = sorted(set(wanted) - {v.name for v in variants})
        if unknown:
            raise UserError(f"{path}: quick.variants names unknown variants {unknown}")
        variants = [v for v in variants if v.name in wanted]
        seeds, steps = q.get("seeds", seeds), q.get("steps", steps)
        teacher_steps = q.get("teacher_steps")
    return Grid(tuple(variants), tuple(int(s) for s in seeds), steps, teacher_steps)


def _run_one(config_path: Path, teachers, teacher_out: Path, run_dir: Path, v: Variant, seed, base):
    """Train, probe and record one (variant, seed) run; returns its metrics."""
    result = run_dir / "result.json"
    if result.is_file():
        return json.loads(result.read_text())
    started = time.perf_counter()
    overrides = [*base, f"seed={seed}", *v.overrides]
    row = demo.train_student(
        config_path, teachers, teacher_out, run_dir, v.spec, overrides, v.student_docs
    )
    row["seconds"] = time.perf_counter() - started
    run_dir.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(row, indent=2) + "\n")
    return row


def summarise(results: dict[str, list[dict]]) -> tuple[dict, dict]:
    """Mean and standard deviation (0 for one seed) of every metric per variant."""
    means, spreads = {}, {}
    for name, rows in results.items():
        means[name], spreads[name] = {}, {}
        for key in METRICS:
            values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
            if values:
                means[name][key] = statistics.fmean(values)
                spreads[name][key] = statistics.stdev(values) if len(values) > 1 else 0.0
    return means, spreads


def plot(results: dict[str, list[dict]], path: Path) -> None:
    """Validation NELBO, token KL and chunk KL per variant, one dot per seed, mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    titles = ("NELBO (val/ce)", "KL to BPE teacher", "chunk KL to Unigram teacher")
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(names) + 1.5), sharey=True)
    for ax, key, title in zip(axes, METRICS, titles, strict=True):
        for i, name in enumerate(names):
            values = [r[key] for r in results[name] if key in r and math.isfinite(r[key])]
            if values:
                ax.barh(i, statistics.fmean(values), color="#9ecae1")
                ax.plot(values, [i] * len(values), "k.", markersize=5)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_study(
    config_path: str | Path,
    grid_path: str | Path | None = None,
    out: str = "runs/study",
    teachers_dir: str = "runs/demo",
    quick: bool = False,
) -> dict:
    """Run (or continue) the study; writes ``study.md`` and ``study.png`` under ``out``.

    Args:
        config_path: the base run config (``conf/study.yaml``, the demo's settings).
        grid_path: the grid file (None: ``conf/study/grid.yaml``).
        out: the study's folder.
        teachers_dir: where the demo's teachers are cached (and trained if missing).
        quick: the grid's ``quick:`` setting (a few minutes; what CI runs).

    Returns:
        ``{variant: [metrics of each seed]}``.
    """
    started = time.perf_counter()
    demo.one_thread()
    config_path, out_dir = Path(config_path), Path(out).resolve()
    grid = load_grid(Path(grid_path or GRID), quick)
    teacher_out = Path(teachers_dir).resolve()
    teacher_base = demo.steps_overrides(grid.teacher_steps)
    teachers = demo.ensure_teachers(teacher_out, config_path, teacher_base)
    base = demo.steps_overrides(grid.steps)
    results: dict[str, list[dict]] = {}
    total, done = len(grid.variants) * len(grid.seeds), 0
    for v in grid.variants:
        for seed in grid.seeds:
            run_dir = out_dir / "runs" / f"{v.name}-s{seed}"
            done += 1
            print(f"\n=== study {done}/{total}: {v.name} seed {seed} ===", flush=True)
            row = _run_one(config_path, teachers, teacher_out, run_dir, v, seed, base)
            results.setdefault(v.name, []).append(row)
    means, spreads = summarise(results)
    table = {
        "teacher_bpe": {"val/ce": teachers.metrics["bpe"].get("val/ce", math.nan)},
        **means,
    }
    mechanisms = measure_mechanisms(config_path, teachers, teacher_out)
    wanted = ("ce", "calm", "tide_cross")
    chunk_runs = {n: out_dir / "runs" / f"{n}-s{grid.seeds[0]}" for n in wanted if n in results}
    gradients = measure_calm_gradients(config_path, teachers, teacher_out, chunk_runs)
    shared = {
        v.name: (out_dir / "runs" / f"{v.name}-s{grid.seeds[0]}", v.variant, v.overrides)
        for v in grid.variants
        if v.pipeline == "shared" and v.variant != "ce"
    }
    shares = measure_term_gradients(config_path, teachers, teacher_out, shared)
    text = _report(grid, table, spreads, time.perf_counter() - started, teachers.key)
    text += (
        "\nThe BPE teacher on the validation programs, by diffusion time t (CompDemo: each "
        "half of the masked tokens read while the other half is revealed; lambda_t: the "
        "published schedule's TIDAL trust):\n\n" + mechanisms + "\n"
        "\nGradient norm of the chunk loss with respect to the student's chunk "
        "log-probabilities, per validation batch, on each student's last checkpoint "
        f"(seed {grid.seeds[0]}; T = the cross pipeline's temperature):\n\n" + gradients + "\n"
        "\nGradient norms over the student's parameters of its CE term and of its weighted "
        "distillation term, on the validation batches, last checkpoint of seed "
        f"{grid.seeds[0]}, at training progress 0.5 and 1 (TIDAL's lambda):\n\n" + shares + "\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.md").write_text(text)
    plot(results, out_dir / "study.png")
    print("\n" + text + f"\nwritten: {out_dir / 'study.md'}, {out_dir / 'study.png'}")
    return results


def _validation_setup(
    config_path: Path,
    teachers,
    teacher_out: Path,
    pipeline: str,
    variant: str,
    teacher: str,
    overrides: tuple[str, ...] | list[str] = (),
):
    """A student config, the validation batches and the frozen teacher ``teacher``.

    The teacher is loaded in its own layout (:meth:`demo.Teachers.kind`: the BPE teacher
    clean-first, the Unigram one bidirectional) with the config's block size.

    Returns:
        ``(config, batches, frozen_teacher)``.
    """
    from tide_lightning.models.frozen import load_teacher
    from tide_lightning.training.builders import build_run

    config = demo.student_config(
        config_path, teachers, teacher_out / "mechanisms", pipeline, variant, teacher, overrides
    )
    datamodule = build_run(demo._with_corpus(config, *demo._corpus_paths(teacher_out))).datamodule
    datamodule.setup("validate")
    frozen = load_teacher(
        teachers.path(teacher), teachers.kind(teacher), block_size=config.objective.block_size
    )
    return config, list(datamodule.val_dataloader()), frozen


def measure_mechanisms(config_path: Path, teachers, teacher_out: Path) -> str:
    """CompDemo and TIDAL measured on the BPE teacher over the validation batches (markdown).

    lambda_t is the published schedule's (the base config's objective, no grid overrides).

    The measurement of every validation (:func:`~tide_lightning.training.mechanisms.teacher_by_t`
    sums :func:`~tide_lightning.training.mechanisms.teacher_sums`), here at progress 0.5 and 1.
    """
    from tide_lightning.training.mechanisms import mechanism_table, teacher_by_t

    config, batches, teacher = _validation_setup(
        config_path, teachers, teacher_out, "shared", "tide_shared", "bpe"
    )
    o = config.objective
    return mechanism_table(
        teacher_by_t(teacher, batches), o.lambda_init, o.lambda_max, o.lambda_shape, o.tidal_axis
    )


def measure_calm_gradients(
    config_path: Path, teachers, teacher_out: Path, runs: dict[str, Path]
) -> str:
    """CALM and Reverse CALM gradient norms per validation batch on trained students (markdown).

    Each batch's chunks are those of a ``tide_cross`` validation step
    (:func:`~tide_lightning.method.objective.distill_step`), scored as validation scores
    them (:func:`~tide_lightning.training.mechanisms.chunk_gradient_norms`).

    Args:
        runs: row name -> a student's run folder (its ``checkpoints/last.ckpt`` is read).
    """
    import statistics as st

    import torch

    from tide_lightning.generation.export import load_any
    from tide_lightning.method.objective import distill_step
    from tide_lightning.training.mechanisms import chunk_gradient_norms

    config, batches, teacher = _validation_setup(
        config_path, teachers, teacher_out, "cross", "tide_cross", "unigram"
    )
    o = config.objective.resolved("cross")
    lines = [
        "| student | batches | CALM gradient norm, mean (max) | Reverse CALM, mean (max) |",
        "|---|---|---|---|",
    ]
    for name, run_dir in runs.items():
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            continue
        student = load_any(ckpt, dtype=torch.float32, device="cpu").student.eval()
        gen = torch.Generator().manual_seed(0)
        norms = []
        for b in batches:
            with torch.no_grad():
                out = distill_step(student, teacher, b, o, 1.0, gen, pipeline="cross")
            norms.append(
                chunk_gradient_norms(out.distill_student, out.distill_teacher, o.temperature)
            )
        cells = []
        for key in ("calm", "reverse_calm"):
            values = [n[key] for n in norms]
            cells.append(f"{st.fmean(values):.4f} ({max(values):.4f})")
        lines.append(f"| {name} | {len(norms)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_term_gradients(
    config_path: Path, teachers, teacher_out: Path, runs: dict[str, tuple[Path, tuple]]
) -> str:
    """Per shared student: gradient norms of its CE and distillation terms (markdown).

    Args:
        runs: row name -> (run folder, the variant's overrides); the last checkpoint is
            read and scored at progress 0.5 and 1 on the validation batches.
    """
    import statistics as st

    import torch

    from tide_lightning.generation.export import load_any
    from tide_lightning.training.mechanisms import term_gradient_norms

    _, batches, teacher = _validation_setup(
        config_path, teachers, teacher_out, "shared", "tide_shared", "bpe"
    )
    lines = [
        "| student | progress | CE gradient norm | distillation gradient norm | share |",
        "|---|---|---|---|---|",
    ]
    for name, (run_dir, variant, overrides) in runs.items():
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            continue
        config = demo.student_config(
            config_path, teachers, teacher_out / "mechanisms", "shared", variant, "bpe",
            overrides,
        )  # fmt: skip
        student = load_any(ckpt, dtype=torch.float32, device="cpu").student
        for progress in (0.5, 1.0):
            gen = torch.Generator().manual_seed(0)
            norms = [
                term_gradient_norms(student, teacher, b, config.objective, progress, gen)
                for b in batches
            ]
            ce = st.fmean(n["ce"] for n in norms)
            distill = st.fmean(n["distill"] for n in norms)
            lines.append(
                f"| {name} | {progress} | {ce:.3f} | {distill:.3f} | "
                f"{distill / max(ce + distill, 1e-12):.1%} |"
            )
    return "\n".join(lines)


def _report(grid: Grid, table: dict, spreads: dict, seconds: float, key: str) -> str:
    lines = [
        f"Study: {len(grid.variants)} variants x seeds {list(grid.seeds)}, "
        f"{grid.steps or 'config'} steps each, teachers {key}; {seconds / 60:.1f} min "
        "(runs already recorded are read, not retrained).",
        "",
        demo.format_table(table, spreads),
        "",
        "Mean +- standard deviation over seeds; gap closed = share of the ce student's "
        "NELBO gap to teacher_bpe that the variant's mean closes.",
        "",
        "| variant | pipeline | objective | overrides |",
        "|---|---|---|---|",
    ]
    for v in grid.variants:
        extra = [*v.overrides, *([f"student_docs={v.student_docs}"] if v.student_docs else [])]
        lines.append(f"| {v.name} | {v.pipeline} | {v.variant} | {' '.join(extra) or '-'} |")
    return "\n".join(lines) + "\n"
