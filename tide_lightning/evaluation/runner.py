"""Generate, score and record: the evaluation loop, independent of any model.

The runner only needs ``generate_fn(prompts) -> completions``, so the same loop
serves the block-diffusion sampler, an autoregressive baseline or a stub in tests.
Generation runs in the calling thread, batch by batch; scoring (which for code means
a sandboxed process per sample) runs in worker threads, overlapping the next batch's
generation. A scorer that raises marks that one record as an error and the run goes on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tide_lightning.errors import UserError
from tide_lightning.evaluation.task import Sample, Task

GenerateFn = Callable[[list[str]], list[str]]


def _score(task: Task, sample: Sample, completion: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task": task.name,
        "id": sample.id,
        "prompt": sample.prompt,
        "completion": completion,
    }
    try:
        record.update(task.score(sample, completion))
    except Exception as exc:  # one broken item must not end the run
        record.update({m: False for m in task.metrics})
        record["score_error"] = f"{type(exc).__name__}: {exc}"
    return record


def run_task(
    generate_fn: GenerateFn,
    task: Task,
    batch_size: int = 8,
    workers: int | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Generate for every sample of ``task`` and score each completion.

    Args:
        generate_fn: maps a list of prompts to as many completions.
        task: the benchmark.
        batch_size: prompts per ``generate_fn`` call.
        workers: scoring threads (default ``min(4, cpu_count)``).
        show_progress: show a tqdm bar counting scored samples.

    Returns:
        One record per sample, in sample order.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    futures: list[Future] = []
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(task.samples), desc=task.name, disable=not show_progress) as bar,
    ):
        for start in range(0, len(task.samples), batch_size):
            batch = task.samples[start : start + batch_size]
            completions = list(generate_fn([s.prompt for s in batch]))
            if len(completions) != len(batch):
                raise ValueError(
                    f"generate_fn returned {len(completions)} completions for {len(batch)} prompts"
                )
            for sample, completion in zip(batch, completions, strict=True):
                future = pool.submit(_score, task, sample, completion)
                future.add_done_callback(lambda _: bar.update(1))
                futures.append(future)
        return [f.result() for f in futures]


def summarize(task: Task, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``n`` and each metric of ``task`` as a percentage over ``records``."""
    n = len(records)
    summary: dict[str, float] = {"n": n}
    for metric in task.metrics:
        summary[metric] = 100.0 * sum(float(r[metric]) for r in records) / n if n else 0.0
    return summary


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """A Markdown table with one row per (task, metric)."""
    lines = ["| task | metric | score | n |", "|---|---|---|---|"]
    for name, values in summary.items():
        for metric, value in values.items():
            if metric != "n":
                lines.append(f"| {name} | {metric} | {value:.2f} | {int(values['n'])} |")
    return "\n".join(lines) + "\n"


def evaluate(
    generate_fn: GenerateFn,
    tasks: Sequence[Task],
    out_dir: str | Path,
    batch_size: int = 8,
    workers: int | None = None,
    show_progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Run every task, write ``<task>.jsonl`` records and ``summary.{json,md}``.

    Args:
        generate_fn: maps a list of prompts to as many completions.
        tasks: the benchmarks (see :func:`tide_lightning.evaluation.build_tasks`).
        out_dir: where the records and the summary go (created if needed).
        batch_size: prompts per ``generate_fn`` call.
        workers: scoring threads (default ``min(4, cpu_count)``).
        show_progress: show progress bars.
        provenance: what produced the scores (model path and hash, sampler settings,
            task data files and item counts, code version, date); written as
            ``provenance.json`` and at the top of ``summary.md``.

    Returns:
        ``{task: {"n": count, metric: percentage, ...}}``.

    Raises:
        UserError: a task without items.
    """
    empty = [task.name for task in tasks if not task.samples]
    if empty:  # a score over zero items would read as 0.00
        raise UserError(f"task {empty[0]} has no items to evaluate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float]] = {}
    for task in tasks:
        records = run_task(generate_fn, task, batch_size, workers, show_progress)
        with open(out_dir / f"{task.name}.jsonl", "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        summary[task.name] = summarize(task, records)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    header = ""
    if provenance is not None:
        (out_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        header = "".join(f"- {key}: {json.dumps(value)}\n" for key, value in provenance.items())
        header += "\n"
    (out_dir / "summary.md").write_text(header + format_summary(summary))
    return summary
