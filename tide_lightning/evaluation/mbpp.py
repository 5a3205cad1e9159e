"""MBPP from a local file in either public schema.

Original (``mbpp.jsonl``): ``task_id, text, code, test_list, test_setup_code,
challenge_test_list``. Sanitized (``sanitized-mbpp.json``): ``task_id, prompt, code,
test_imports, test_list``. The standard test split is task ids 11-510. The program
run in the sandbox is the set-up code, the model's code, then the asserts.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from tide_lightning.evaluation.code_scoring import score_program
from tide_lightning.evaluation.extraction import extract_code
from tide_lightning.evaluation.prompts import MBPP_INSTRUCTION, chat_prompt
from tide_lightning.evaluation.task import Sample, Task, read_records

TEST_SPLIT = range(11, 511)


def load_mbpp(path: str | Path, split: str = "test") -> list[dict[str, Any]]:
    """MBPP rows normalised to ``task_id, text, code, test_list, setup``.

    Args:
        path: the local MBPP file (``.jsonl`` or ``.json``).
        split: ``"test"`` keeps task ids 11-510 (those present in the file);
            ``"all"`` keeps every row.
    """
    if split not in ("test", "all"):
        raise ValueError(f"split must be 'test' or 'all', got {split!r}")
    rows = []
    for row in read_records(path):
        if split == "test" and int(row["task_id"]) not in TEST_SPLIT:
            continue
        setup = "\n".join([row.get("test_setup_code") or "", *row.get("test_imports", [])])
        rows.append(
            {
                "task_id": row["task_id"],
                "text": row.get("text") or row["prompt"],
                "code": row.get("code", ""),
                "test_list": list(row["test_list"]),
                "setup": setup.strip(),
            }
        )
    return rows


def mbpp_program(problem: dict[str, Any], completion: str) -> str:
    """Set-up code, then the extracted solution, then the asserts."""
    tests = "\n".join(problem["test_list"])
    return f"{problem['setup']}\n\n{extract_code(completion)}\n\n{tests}\n"


def mbpp_task(
    path: str | Path,
    limit: int | None = None,
    timeout: float = 10.0,
    tokenizer: Any = None,
    split: str = "test",
) -> Task:
    """MBPP as a :class:`Task` (zero-shot instruct prompt listing the asserts).

    Args:
        path: the local MBPP file.
        limit: keep only the first ``limit`` problems.
        timeout: seconds per program.
        tokenizer: optional tokenizer whose chat template renders the prompts.
        split: see :func:`load_mbpp`.
    """
    problems = load_mbpp(path, split)[:limit]
    samples = tuple(
        Sample(
            id=f"MBPP/{p['task_id']}",
            prompt=chat_prompt(
                MBPP_INSTRUCTION.format(text=p["text"], tests="\n".join(p["test_list"])),
                None,
                tokenizer,
            ),
            reference=p,
        )
        for p in problems
    )
    score = partial(score_program, timeout=timeout, program_fn=mbpp_program)
    return Task("mbpp", samples, score, ("pass@1",))
