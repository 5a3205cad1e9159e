"""Document sources: index every document once, then read any one by number.

Why an index instead of a plain iterator: exact resume and disjoint sharding both
need "document number q of source s" to be cheap and deterministic. At start each
source is scanned once (JSONL line offsets, Parquet row counts from metadata,
one document per text/code file); a worker then seeks straight to the documents of
its shard, and a resumed run re-opens at the recorded position without replaying
the stream. Bad records are found lazily when read: they are skipped, counted by
reason, and a warning names the file and line.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

KINDS = ("jsonl", "parquet", "text", "code", "hf")
SKIP_REASONS = (
    "malformed_json",
    "non_utf8",
    "empty",
    "missing_field",
    "bad_messages",
    "too_long",
    "no_response",
)
CODE_SUFFIXES = (".py", ".c", ".h", ".cpp", ".rs", ".go", ".js", ".ts", ".java", ".sh")


@dataclass(frozen=True)
class SourceSpec:
    """One corpus in the mixture.

    Attributes:
        kind: "jsonl", "parquet", "text" (one document per file), "code" (one document
            per code file of a directory) or "hf" (a Hugging Face dataset by name).
        path: a file, a directory (all files below it) or a glob (``**`` recurses);
            for "hf" the dataset name.
        weight: relative sampling probability in the mixture (> 0).
        field: record field holding the document; None picks "messages" (chat) if
            present, else "text". A string value is raw text, a list is chat messages.
        split: dataset split, "hf" only.
        suffixes: file endings kept for "code" directories.
    """

    kind: str
    path: str
    weight: float = 1.0
    field: str | None = None
    split: str = "train"
    suffixes: tuple[str, ...] = CODE_SUFFIXES

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SourceSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.weight > 0:
            raise ValueError(f"SourceSpec.weight must be > 0, got {self.weight} for {self.path}")


@dataclass(frozen=True)
class Record:
    """One usable document: raw ``text`` or chat ``messages`` (exactly one is set)."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    where: str = ""


class SkipLog:
    """Counts skipped records by reason and warns (file and line) up to a cap."""

    def __init__(self, max_warnings: int = 50) -> None:
        self.counts: Counter[str] = Counter()
        self.max_warnings = max_warnings

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Count one skipped record; the first ``max_warnings`` are logged."""
        self.counts[reason] += 1
        n = sum(self.counts.values())
        if n <= self.max_warnings:
            log.warning(
                "skipped record (%s) at %s%s", reason, where, f": {detail}" if detail else ""
            )
            if n == self.max_warnings:
                log.warning("further skipped-record warnings suppressed in this process")


def resolve_files(spec: SourceSpec) -> list[Path]:
    """Expand a spec's path (file, directory or glob) into a sorted list of files.

    Raises:
        FileNotFoundError: nothing matches the path (the message names it).
    """
    p = spec.path
    if any(ch in p for ch in "*?["):
        files = [Path(f) for f in glob.glob(p, recursive=True) if os.path.isfile(f)]
    elif os.path.isdir(p):
        files = [f for f in Path(p).rglob("*") if f.is_file()]
        if spec.kind == "code":
            files = [f for f in files if f.suffix in spec.suffixes]
    elif os.path.isfile(p):
        files = [Path(p)]
    else:
        raise FileNotFoundError(f"data source {spec.kind}:{p}: no such file or directory")
    if not files:
        raise FileNotFoundError(f"data source {spec.kind}:{p}: matches no files")
    return sorted(files)


def _jsonl_line_offsets(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and 1-based line numbers of the non-blank lines of a file."""
    offsets, lines, pos = [], [], 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                offsets.append(pos)
                lines.append(n)
            pos += len(line)
    return np.asarray(offsets, dtype=np.int64), np.asarray(lines, dtype=np.int64)


class DocumentSource:
    """A random-access view of one :class:`SourceSpec`: ``len`` documents, ``read(i)``.

    Built once per rank (``open_source``); pickled into dataloader workers, where file
    handles and Parquet row groups are opened lazily and cached.
    """

    def __init__(self, spec: SourceSpec, max_doc_chars: int) -> None:
        self.spec = spec
        self.max_doc_chars = max_doc_chars
        self.files: list[Path] = []
        self._file_of: np.ndarray = np.zeros(0, np.int64)
        self._offset: np.ndarray = np.zeros(0, np.int64)  # byte offset / row / unused
        self._line: np.ndarray = np.zeros(0, np.int64)
        self._hf: Any = None
        self._cache: dict[str, Any] = {}
        self._build()

    def _build(self) -> None:
        kind = self.spec.kind
        if kind == "hf":
            self._hf = _load_hf(self.spec)
            n = len(self._hf)
            self._offset = np.arange(n, dtype=np.int64)
            self._file_of = np.zeros(n, np.int64)
            self._line = self._offset + 1
            if n == 0:
                raise ValueError(f"data source hf:{self.spec.path} ({self.spec.split}) is empty")
            return
        self.files = resolve_files(self.spec)
        file_of, offset, line = [], [], []
        for fi, f in enumerate(self.files):
            if kind == "jsonl":
                off, ln = _jsonl_line_offsets(f)
            elif kind == "parquet":
                import pyarrow.parquet as pq

                n = pq.ParquetFile(f).metadata.num_rows
                off, ln = np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64)
            else:
                off, ln = np.zeros(1, np.int64), np.ones(1, np.int64)
            file_of.append(np.full(len(off), fi, np.int64))
            offset.append(off)
            line.append(ln)
        self._file_of = np.concatenate(file_of)
        self._offset = np.concatenate(offset)
        self._line = np.concatenate(line)
        if len(self._offset) == 0:
            raise ValueError(f"data source {kind}:{self.spec.path} holds no documents")

    def __len__(self) -> int:
        return len(self._offset)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def where(self, i: int) -> str:
        """Human-readable location of document ``i`` ("file:line" or "name[split]:row")."""
        if self.spec.kind == "hf":
            return f"{self.spec.path}[{self.spec.split}]:{int(self._offset[i])}"
        return f"{self.files[int(self._file_of[i])]}:{int(self._line[i])}"

    def read(self, i: int, skips: SkipLog) -> Record | None:
        """Read document ``i``; returns None (and counts the reason) when it is unusable."""
        where = self.where(i)
        kind = self.spec.kind
        try:
            if kind == "jsonl":
                raw = self._read_line(i)
                if len(raw) > self.max_doc_chars * 4:
                    skips.skip("too_long", where, f"{len(raw)} bytes")
                    return None
                text = raw.decode("utf-8")
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    skips.skip("malformed_json", where, str(e))
                    return None
                return self._from_object(obj, where, skips)
            if kind == "parquet":
                return self._from_object(self._read_row(i), where, skips)
            if kind == "hf":
                return self._from_object(self._hf[int(self._offset[i])], where, skips)
            path = self.files[int(self._file_of[i])]
            if path.stat().st_size > self.max_doc_chars * 4:
                skips.skip("too_long", where, f"{path.stat().st_size} bytes")
                return None
            return self._from_value(path.read_bytes().decode("utf-8"), where, skips)
        except UnicodeDecodeError as e:
            skips.skip("non_utf8", where, str(e))
            return None

    def _read_line(self, i: int) -> bytes:
        fi = int(self._file_of[i])
        handle = self._cache.get(f"fh{fi}")
        if handle is None:
            handle = self._cache[f"fh{fi}"] = open(self.files[fi], "rb")  # noqa: SIM115
        handle.seek(int(self._offset[i]))
        return handle.readline()

    def _read_row(self, i: int) -> dict[str, Any]:
        import pyarrow.parquet as pq

        fi, row = int(self._file_of[i]), int(self._offset[i])
        pf = self._cache.get(f"pf{fi}")
        if pf is None:
            pf = self._cache[f"pf{fi}"] = pq.ParquetFile(self.files[fi])
        meta, start = pf.metadata, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if row < start + n:
                key = f"rg{fi}:{g}"
                if self._cache.get("rg_key") != key:
                    self._cache["rg_key"], self._cache["rg"] = key, pf.read_row_group(g).to_pylist()
                return self._cache["rg"][row - start]
            start += n
        raise IndexError(row)

    def _from_object(self, obj: Any, where: str, skips: SkipLog) -> Record | None:
        if not isinstance(obj, dict):
            skips.skip("missing_field", where, "record is not an object")
            return None
        field = self.spec.field
        if field is None:
            field = "messages" if "messages" in obj else "text"
        if obj.get(field) is None:
            skips.skip("missing_field", where, f"no field {field!r}")
            return None
        return self._from_value(obj[field], where, skips)

    def _from_value(self, value: Any, where: str, skips: SkipLog) -> Record | None:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, str):
            if not value.strip():
                skips.skip("empty", where)
                return None
            if len(value) > self.max_doc_chars:
                skips.skip("too_long", where, f"{len(value)} characters")
                return None
            return Record(text=value, where=where)
        return _messages_record(value, where, skips, self.max_doc_chars)


def _messages_record(value: Any, where: str, skips: SkipLog, max_chars: int) -> Record | None:
    ok = (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        skips.skip("bad_messages", where, "expected a list of {role, content} strings")
        return None
    msgs = tuple({"role": m["role"], "content": m["content"]} for m in value)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
        skips.skip("empty", where, "no non-empty assistant message")
        return None
    if sum(len(m["content"]) for m in msgs) > max_chars:
        skips.skip("too_long", where)
        return None
    return Record(messages=msgs, where=where)


def _load_hf(spec: SourceSpec) -> Any:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"data source hf:{spec.path} needs the `datasets` package (pip install datasets)"
        ) from e
    try:
        return datasets.load_dataset(spec.path, split=spec.split)
    except Exception as e:
        raise FileNotFoundError(f"data source hf:{spec.path} ({spec.split}): {e}") from e


def open_source(spec: SourceSpec, max_doc_chars: int = 1_000_000) -> DocumentSource:
    """Index one source; fails at once, naming the path, if it is missing or empty."""
    return DocumentSource(spec, max_doc_chars)
