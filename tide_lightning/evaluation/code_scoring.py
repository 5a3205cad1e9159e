"""Scoring a code benchmark: build the test program, run it in the sandbox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tide_lightning.evaluation.sandbox import check_program
from tide_lightning.evaluation.task import Sample


def score_program(
    sample: Sample,
    completion: str,
    timeout: float,
    program_fn: Callable[[dict[str, Any], str], str],
) -> dict[str, Any]:
    """Run the test program of ``sample`` in the sandbox.

    Args:
        sample: the benchmark item (its ``reference`` feeds ``program_fn``).
        completion: the model's answer.
        timeout: wall-clock seconds for the program.
        program_fn: ``program_fn(reference, completion) -> source``.

    Returns:
        Record fields: ``pass@1``, the sandbox ``status`` and ``detail``, the end of
        stderr, and the run time.
    """
    result = check_program(program_fn(sample.reference, completion), timeout=timeout)
    return {
        "pass@1": result.passed,
        "status": result.status,
        "detail": result.detail,
        "stderr_tail": result.stderr[-1000:],
        "run_s": round(result.duration_s, 3),
    }
