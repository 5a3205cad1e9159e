"""Which records of a source train and which are held out: filters and the held-out carve.

The published recipe selects data before training: OpenCoder's ``[lang:python]`` keeps
the records whose assistant reply contains "python", and 5% of the data is held out for
evaluation (``train_test_split(test_size=0.05, seed=42)``). Here both are index views of
an opened :class:`~tide_lightning.data.sources.DocumentSource`, so the stream, the mixture
and exact resume see an ordinary source of ``len(view)`` documents:

- a filter reads every record of the source once at set-up and keeps the indices of
  the usable ones that match (so the count of a filtered source is exact: unreadable
  records are gone from it as well);
- the held-out carve permutes a source's indices with a generator seeded by
  ``(seed, source number)`` and gives the first ``ceil(fraction * n)`` to validation and
  the rest to training: deterministic, disjoint, identical on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tide_lightning.data.sources import DocumentSource, Record, SkipLog, SourceSpec, open_source
from tide_lightning.errors import UserError


class SourceView:
    """A subset of a source's documents, read through the source.

    Args:
        source: the opened source.
        indices: Int[n] document indices of ``source`` the view exposes, in order.
    """

    def __init__(self, source: DocumentSource | SourceView, indices: np.ndarray) -> None:
        self.base = source
        self.indices = np.asarray(indices, dtype=np.int64)

    @property
    def spec(self) -> SourceSpec:
        return self.base.spec

    def __len__(self) -> int:
        return len(self.indices)

    def where(self, i: int) -> str:
        return self.base.where(int(self.indices[i]))

    def read(self, i: int, skips: SkipLog) -> Record | None:
        return self.base.read(int(self.indices[i]), skips)


def record_contains(record: Record, needle: str) -> bool:
    """Whether the last assistant reply (chat) or the text contains ``needle``."""
    if record.messages is None:
        return needle in (record.text or "")
    replies = [m["content"] for m in record.messages if m["role"] == "assistant"]
    return bool(replies) and needle in replies[-1]


def filter_source(source: DocumentSource, needle: str) -> SourceView:
    """The usable records of ``source`` whose assistant reply contains ``needle``.

    Raises:
        UserError: no record matches (the message names the source and the string).
    """
    quiet = SkipLog(max_warnings=0)
    keep = []
    for i in range(len(source)):
        record = source.read(i, quiet)
        if record is not None and record_contains(record, needle):
            keep.append(i)
    if not keep:
        raise UserError(
            f"data source {source.spec.path}: no record's assistant reply contains {needle!r}"
        )
    return SourceView(source, np.asarray(keep, dtype=np.int64))


def carve_heldout(
    source: DocumentSource | SourceView, fraction: float, seed: int, number: int
) -> tuple[SourceView, SourceView]:
    """Split a source into (training, held-out) views, ``ceil(fraction * n)`` held out.

    Args:
        source: the (possibly filtered) source.
        fraction: share held out, in (0, 1).
        seed: the run's seed.
        number: the source's position in ``data.sources`` (each source its own split).
    """
    n = len(source)
    held = math.ceil(fraction * n)
    if held >= n:
        raise UserError(
            f"data source {source.spec.path}: holding out {fraction} of {n} records "
            "leaves none to train on"
        )
    order = np.random.default_rng([seed, 15485863, number]).permutation(n)
    # Each view keeps file order inside it (sorted), so reads stay mostly sequential.
    return SourceView(source, np.sort(order[held:])), SourceView(source, np.sort(order[:held]))


def prepare_sources(
    specs: Sequence[SourceSpec],
    max_doc_chars: int,
    heldout_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[list[DocumentSource | SourceView], list[SourceView]]:
    """Open, filter and (optionally) carve the training sources.

    Returns:
        The training sources and the held-out views (empty without a carve).
    """
    train: list[DocumentSource | SourceView] = []
    heldout: list[SourceView] = []
    for number, spec in enumerate(specs):
        source: DocumentSource | SourceView = open_source(spec, max_doc_chars)
        if spec.assistant_contains is not None:
            source = filter_source(source, spec.assistant_contains)
        if heldout_fraction > 0:
            source, held = carve_heldout(source, heldout_fraction, seed, number)
            heldout.append(held)
        train.append(source)
    return train, heldout


def count_records(sources: Sequence[DocumentSource | SourceView]) -> int:
    """Documents the training sources hold (one epoch of the concatenated mixture)."""
    return sum(len(s) for s in sources)
