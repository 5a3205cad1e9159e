"""GSM8K from a local file in the standard schema (``question``, ``answer`` ending in
``#### <number>``). Both readings of the model's answer are scored: ``strict`` (the
number after ``####``) and ``flexible`` (the last number in the text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tide_lightning.evaluation.extraction import gsm8k_flexible, gsm8k_reference, gsm8k_strict
from tide_lightning.evaluation.prompts import GSM8K_INSTRUCTION, chat_prompt
from tide_lightning.evaluation.task import Sample, Task, read_records


def load_gsm8k(path: str | Path) -> list[dict[str, Any]]:
    """GSM8K rows with the parsed reference value added as ``target``."""
    return [{**row, "target": gsm8k_reference(row["answer"])} for row in read_records(path)]


def score_gsm8k(sample: Sample, completion: str) -> dict[str, Any]:
    """Fields for the record: both extractions and whether each equals the target."""
    target = sample.reference["target"]
    strict, flexible = gsm8k_strict(completion), gsm8k_flexible(completion)
    return {
        "target": str(target),
        "strict_answer": None if strict is None else str(strict),
        "flexible_answer": None if flexible is None else str(flexible),
        "strict": strict == target,
        "flexible": flexible == target,
    }


def gsm8k_task(path: str | Path, limit: int | None = None, tokenizer: Any = None) -> Task:
    """GSM8K as a :class:`Task` (zero-shot, chain of thought, ``####`` answer line).

    Args:
        path: the local GSM8K file (e.g. ``test.jsonl``).
        limit: keep only the first ``limit`` problems.
        tokenizer: optional tokenizer whose chat template renders the prompts.
    """
    rows = load_gsm8k(path)[:limit]
    samples = tuple(
        Sample(
            id=f"GSM8K/{i}",
            prompt=chat_prompt(GSM8K_INSTRUCTION.format(question=row["question"]), None, tokenizer),
            reference=row,
        )
        for i, row in enumerate(rows)
    )
    return Task("gsm8k", samples, score_gsm8k, ("strict", "flexible"))
