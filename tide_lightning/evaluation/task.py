"""What a benchmark is to the runner: prompts to generate from and a scorer per sample."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One benchmark item.

    Attributes:
        id: stable identifier (e.g. ``HumanEval/0``).
        prompt: the exact text handed to the generator (chat template applied).
        reference: whatever the scorer needs (tests, entry point, answer).
    """

    id: str
    prompt: str
    reference: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """A benchmark ready to run.

    Attributes:
        name: short name used for file names and the summary (``humaneval``).
        samples: the items, in order.
        score: ``score(sample, completion) -> record fields``; must be thread-safe.
            The fields named in ``metrics`` hold booleans or numbers.
        metrics: record fields averaged (as percentages) into the summary.
    """

    name: str
    samples: tuple[Sample, ...]
    score: Callable[[Sample, str], dict[str, Any]]
    metrics: tuple[str, ...]


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a ``.jsonl``, ``.jsonl.gz`` or ``.json`` (a list of objects) file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            yield from json.load(f)
