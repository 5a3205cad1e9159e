"""``evaluate --suite paper``: the paper's eight benchmarks, as ``scripts/eval_all.sh`` ran them.

The published table comes from lm-evaluation-harness run task by task with the chat
template applied, block 32, no classifier-free guidance, and per task a number of new
tokens, denoising steps and few-shot examples (:data:`PAPER_TASKS`). Here every task goes
through our lm-eval model (:mod:`tide_lightning.evaluation.lm_eval_adapter`) with a
sampler fixed to those settings: the published steps equal the new tokens, i.e. one
token committed per step, so ``steps_per_block`` is the block size; the number of new
tokens is the published one whatever the task's own ``max_gen_toks`` says.

Nothing downloads (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` are set). A row runs only
when its dataset is in the local Hugging Face cache and lm-eval's evaluator (and, for two
tasks of the published fork, the task definition) is importable; otherwise the row is
skipped with what to place where. The result is the paper's table layout, the published
columns (docs/method.md §1) beside ours, in ``paper_table.md`` and ``paper_results.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK_SIZE = 32
CFG_SCALE = 0.0  # the published runs use no classifier-free guidance; our sampler has none


@dataclass(frozen=True)
class PaperTask:
    """One row of the published evaluation."""

    task: str
    """The lm-eval task (or group) name of scripts/eval_all.sh."""
    benchmark: str
    """The row label in the paper's table."""
    max_new_tokens: int
    steps: int
    num_fewshot: int
    dataset: str
    """The Hugging Face dataset the task reads (what to place in the local cache)."""
    dataset_config: str | None = None
    metrics: tuple[str, ...] = ()
    """lm-eval metric keys, first found wins (else the first non-stderr number)."""
    unsafe_code: bool = False
    """Runs generated code (lm-eval's --confirm_run_unsafe_code)."""
    fork_task: bool = False
    """Defined in the published fork's lm-eval tasks, not in upstream lm-eval."""


PAPER_TASKS: tuple[PaperTask, ...] = (
    PaperTask("gsm8k_cot", "GSM8K", 256, 256, 0, "openai/gsm8k", "main",
              ("exact_match,flexible-extract", "exact_match,strict-match")),
    PaperTask("minerva_math", "MATH", 256, 256, 0, "EleutherAI/hendrycks_math", None,
              ("exact_match,none", "math_verify,none")),
    PaperTask("bbh", "BBH", 256, 256, 3, "SaylorTwift/bbh", None, ("exact_match,get-answer",)),
    PaperTask("mmlu_pro", "MMLU-Pro", 256, 256, 0, "TIGER-Lab/MMLU-Pro", None,
              ("exact_match,custom-extract",)),
    PaperTask("hellaswag_gen", "HellaSwag", 3, 3, 0, "Rowan/hellaswag", None,
              ("exact_match,none",), fork_task=True),
    PaperTask("mmlu_generative_dream", "MMLU", 3, 3, 0, "cais/mmlu", "all",
              ("exact_match,none",), fork_task=True),
    PaperTask("humaneval_instruct", "HumanEval", 256, 256, 0, "openai/openai_humaneval", None,
              ("pass@1,create_test",), unsafe_code=True),
    PaperTask("mbpp_instruct", "MBPP", 256, 256, 0, "google-research-datasets/mbpp", None,
              ("pass_at_1,extract_code", "pass_at_1,none"), unsafe_code=True),
)  # fmt: skip
"""scripts/eval_all.sh's task list, in the order of the paper's table."""

PUBLISHED_COLUMNS = (
    "AR", "BD3LM", "KL", "TIDE-Shared (B)", "TIDE-Cross (B)", "CALM", "TIDE-Shared (A)",
    "TIDE-Cross (A)",
)  # fmt: skip
PUBLISHED: dict[str, tuple[float, ...]] = {
    "GSM8K": (59.60, 45.56, 43.97, 48.98, 45.03, 48.60, 49.89, 52.24),
    "MATH": (32.40, 13.08, 9.40, 11.16, 9.76, 13.14, 12.98, 13.20),
    "BBH": (41.50, 26.32, 25.79, 26.79, 26.00, 24.21, 26.85, 27.37),
    "MMLU-Pro": (24.70, 13.80, 13.19, 14.48, 12.88, 13.47, 14.02, 14.52),
    "HellaSwag": (47.40, 39.28, 39.78, 40.50, 39.50, 40.42, 39.57, 39.88),
    "MMLU": (52.80, 39.15, 39.57, 39.92, 39.09, 39.42, 39.54, 39.59),
    "HumanEval": (32.30, 46.34, 41.46, 48.78, 42.68, 43.90, 49.39, 48.17),
    "MBPP": (36.60, 37.80, 31.20, 37.80, 31.40, 34.80, 38.40, 38.60),
    "Average": (40.91, 32.67, 30.55, 33.55, 30.79, 32.25, 33.83, 34.20),
}
"""The paper's table (docs/method.md §1), one tuple per benchmark in PUBLISHED_COLUMNS order."""


@dataclass
class RowResult:
    """What one row produced: a score in percent, or why it was skipped."""

    task: PaperTask
    score: float | None = None
    metric: str | None = None
    skipped: str | None = None


Runner = Callable[[PaperTask, Any, int | None], dict[str, float]]
"""``runner(task, lm, limit) -> {metric key: value in [0, 1]}``."""


def steps_per_block(task: PaperTask, block_size: int = BLOCK_SIZE) -> int:
    """Our sampler's steps per full block for the published tokens-per-step rate.

    The published runs take ``steps`` denoising steps for ``max_new_tokens`` tokens; our
    sampler scales ``steps_per_block`` to a shortened last block, so the same rate is
    ``block_size * steps / max_new_tokens`` (32 for 256/256 and for 3/3: one token a step).
    """
    return max(1, min(block_size, round(block_size * task.steps / task.max_new_tokens)))


def hf_cache_dirs() -> list[Path]:
    """Where ``datasets`` (and the hub client) keep downloaded datasets on this machine."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    return [datasets_cache, hub_cache]


def dataset_present(task: PaperTask) -> bool:
    """Whether the task's dataset is in a local Hugging Face cache (either layout)."""
    org_name = task.dataset.replace("/", "___")
    hub_name = "datasets--" + task.dataset.replace("/", "--")
    return any((d / org_name).is_dir() or (d / hub_name).is_dir() for d in hf_cache_dirs())


def where_to_place(task: PaperTask) -> str:
    """The one-line instruction a skipped row prints."""
    config = f", {task.dataset_config!r}" if task.dataset_config else ""
    cache = hf_cache_dirs()[0]
    text = (
        f"dataset {task.dataset} is not in {cache}: on a machine with network run "
        f'`python -c "import datasets; datasets.load_dataset({task.dataset!r}{config})"` '
        f"and copy its cache folder {task.dataset.replace('/', '___')} into {cache} "
        "(or set HF_DATASETS_CACHE)"
    )
    if task.fork_task:
        text += (
            f"; {task.task} is a task of the published fork's lm-eval "
            "(PKU-YuanGroup/TIDE's dllm): pass its YAML folder with --include-path"
        )
    return text


def lm_eval_runner(include_path: str | None = None) -> Runner:
    """The real runner: lm-eval's ``simple_evaluate`` on one task with our model."""

    def run(task: PaperTask, lm: Any, limit: int | None) -> dict[str, float]:
        from lm_eval.evaluator import simple_evaluate
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
        out = simple_evaluate(
            model=lm,
            tasks=[task.task],
            num_fewshot=task.num_fewshot,
            limit=limit,
            apply_chat_template=True,
            # The published command line passes no --fewshot_as_multiturn: the BBH
            # examples go into the one user turn, as lm-eval's CLI does by default.
            fewshot_as_multiturn=False,
            task_manager=manager,
            confirm_run_unsafe_code=task.unsafe_code,
        )
        scores = dict(out.get("groups", {}).get(task.task, {}))
        scores.update(out["results"].get(task.task, {}))
        return {k: v for k, v in scores.items() if isinstance(v, (int, float))}

    return run


def lm_eval_missing() -> str | None:
    """Why lm-eval's evaluator cannot run here (a missing module), or None."""
    try:
        import lm_eval.evaluator  # noqa: F401
        import lm_eval.tasks  # noqa: F401
    except ImportError as err:
        return f"lm-eval's evaluator does not import here ({err}): pip install -e .[eval]"
    return None


def pick_metric(task: PaperTask, scores: dict[str, float]) -> tuple[str, float]:
    """The task's headline metric from lm-eval's result dict."""
    for key in task.metrics:
        if key in scores:
            return key, float(scores[key])
    for key, value in scores.items():
        if "stderr" not in key and key != "alias":
            return key, float(value)
    raise ValueError(f"{task.task}: lm-eval returned no metric ({sorted(scores)})")


def run_paper_suite(
    make_lm: Callable[[PaperTask], Any],
    out_dir: str | Path,
    limit: int | None = None,
    runner: Runner | None = None,
    present: Callable[[PaperTask], bool] = dataset_present,
    missing: Callable[[], str | None] = lm_eval_missing,
) -> list[RowResult]:
    """Run every published task that can run here; write the paper table and the JSON.

    Args:
        make_lm: ``task -> lm-eval model`` with the task's sampler settings
            (:func:`suite_model` builds one from a loaded student).
        out_dir: where ``paper_table.md`` and ``paper_results.json`` go.
        limit: first N documents per task (smoke runs; the paper's numbers need None).
        runner: runs one task (default: lm-eval's evaluator).
        present: whether a task's dataset is on this machine.
        missing: why lm-eval cannot run (None when it can).

    Returns:
        One :class:`RowResult` per task, in the paper's row order.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runner = runner or lm_eval_runner()
    rows = []
    for task in PAPER_TASKS:
        if not present(task):
            rows.append(RowResult(task, skipped=where_to_place(task)))
            continue
        reason = missing()
        if reason is not None:
            rows.append(RowResult(task, skipped=reason))
            continue
        metric, value = pick_metric(task, runner(task, make_lm(task), limit))
        rows.append(RowResult(task, score=100.0 * value, metric=metric))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_table.md").write_text(format_paper_table(rows, limit))
    (out / "paper_results.json").write_text(json.dumps(_as_json(rows, limit), indent=2) + "\n")
    return rows


def _as_json(rows: list[RowResult], limit: int | None) -> dict[str, Any]:
    return {
        "limit": limit,
        "block_size": BLOCK_SIZE,
        "cfg_scale": CFG_SCALE,
        "rows": [
            {
                "benchmark": r.task.benchmark,
                "task": r.task.task,
                "max_new_tokens": r.task.max_new_tokens,
                "steps": r.task.steps,
                "num_fewshot": r.task.num_fewshot,
                "score": r.score,
                "metric": r.metric,
                "skipped": r.skipped,
                "published": dict(zip(PUBLISHED_COLUMNS, PUBLISHED[r.task.benchmark], strict=True)),
            }
            for r in rows
        ],
    }


def format_paper_table(rows: list[RowResult], limit: int | None = None) -> str:
    """The paper's table (published columns, then ours), with each skip explained below."""
    header = ["benchmark", *PUBLISHED_COLUMNS, "ours"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ours = "skipped" if r.score is None else f"{r.score:.2f}"
        published = [f"{v:.2f}" for v in PUBLISHED[r.task.benchmark]]
        lines.append("| " + " | ".join([r.task.benchmark, *published, ours]) + " |")
    scored = [r.score for r in rows if r.score is not None]
    average = f"{sum(scored) / len(scored):.2f}" if len(scored) == len(rows) else (
        f"n/a ({len(scored)} of {len(rows)} rows)"
    )  # fmt: skip
    published_avg = [f"{v:.2f}" for v in PUBLISHED["Average"]]
    lines.append("| " + " | ".join(["Average", *published_avg, average]) + " |")
    notes = [""]
    if limit is not None:
        notes.append(f"ours: first {limit} documents per task only (a smoke run, not comparable).")
    for r in rows:
        settings = f"{r.task.max_new_tokens} tokens / {r.task.steps} steps"
        settings += f", {r.task.num_fewshot}-shot" if r.task.num_fewshot else ""
        if r.skipped is not None:
            notes.append(f"- {r.task.benchmark} ({r.task.task}, {settings}): skipped: {r.skipped}")
        else:
            notes.append(f"- {r.task.benchmark} ({r.task.task}, {settings}): {r.metric}")
    return "\n".join(lines + notes) + "\n"


def suite_model(loaded: Any, batch_size: int = 8, seed: int = 0) -> Callable[[PaperTask], Any]:
    """``task -> lm-eval model`` for a loaded student, with the task's published sampler.

    Args:
        loaded: what :func:`tide_lightning.generation.export.load_any` returns.
        batch_size: prompts decoded together.
        seed: sampler seed (greedy decoding does not use it).
    """
    from tide_lightning.evaluation.lm_eval_adapter import register
    from tide_lightning.generation.text import text_generate_fn

    model_class = register()

    def make(task: PaperTask) -> Any:
        fn = text_generate_fn(
            loaded.student, loaded.tokenizer, chat=False, batch_size=batch_size, seed=seed,
            block_size=BLOCK_SIZE, steps_per_block=steps_per_block(task), temperature=0.0,
            max_new_tokens=task.max_new_tokens,
        )  # fmt: skip

        # No max_new_tokens parameter: the adapter then keeps the published length
        # instead of the task's max_gen_toks.
        def generate(prompts: list[str]) -> list[str]:
            return fn(prompts)

        return model_class(generate_fn=generate, batch_size=batch_size)

    return make
