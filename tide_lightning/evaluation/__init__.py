"""Offline evaluation: HumanEval, MBPP and GSM8K scored from any ``generate_fn``.

Model-written code is judged by :func:`tide_lightning.evaluation.sandbox.check_program`, never
in this process. Other benchmarks go through lm-evaluation-harness
(:mod:`tide_lightning.evaluation.lm_eval_adapter`, an optional extra).
"""

from tide_lightning.evaluation.extraction import (
    extract_code,
    gsm8k_flexible,
    gsm8k_reference,
    gsm8k_strict,
)
from tide_lightning.evaluation.gsm8k import gsm8k_task, load_gsm8k
from tide_lightning.evaluation.humaneval import humaneval_program, humaneval_task, load_humaneval
from tide_lightning.evaluation.mbpp import load_mbpp, mbpp_program, mbpp_task
from tide_lightning.evaluation.prompts import chat_prompt
from tide_lightning.evaluation.registry import TASKS, build_tasks
from tide_lightning.evaluation.runner import evaluate, format_summary, run_task
from tide_lightning.evaluation.task import Sample, Task

__all__ = [
    "TASKS",
    "Sample",
    "Task",
    "build_tasks",
    "chat_prompt",
    "evaluate",
    "extract_code",
    "format_summary",
    "gsm8k_flexible",
    "gsm8k_reference",
    "gsm8k_strict",
    "gsm8k_task",
    "humaneval_program",
    "humaneval_task",
    "load_gsm8k",
    "load_humaneval",
    "load_mbpp",
    "mbpp_program",
    "mbpp_task",
    "run_task",
]
