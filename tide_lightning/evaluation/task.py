"""What a benchmark is to the runner: prompts to generate from and a scorer per sample."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tide_lightning.errors import UserError


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
    """Rows of a ``.jsonl``, ``.jsonl.gz`` or ``.json`` (a list of objects) file.

    Raises:
        UserError: the file is missing, unreadable, not UTF-8, not JSON, or holds a row
            that is not an object; the message names the file and, for JSON, the line.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    line_no = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if path.name.endswith((".jsonl", ".jsonl.gz")):
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield _object(json.loads(line), path, line_no)
            else:
                rows = json.load(f)
                if not isinstance(rows, list):
                    raise UserError(f"{path}: expected a JSON list of objects")
                for row in rows:
                    yield _object(row, path, None)
    except UserError:
        raise
    except json.JSONDecodeError as err:
        # json numbers the lines of the string it was given: one JSONL line is line 1.
        line = line_no if line_no else err.lineno
        raise UserError(f"{path}:{line}: not valid JSON ({err.msg}, column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None
    except ValueError as err:  # e.g. an integer over Python's digit limit
        where = f"{path}:{line_no}" if line_no else str(path)
        raise UserError(f"{where}: {err}") from None


def _object(row: Any, path: Path, line: int | None) -> dict[str, Any]:
    if not isinstance(row, dict):
        where = f"{path}:{line}" if line else str(path)
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row
