"""Document sources: index every document once, then read any one by number.

Why an index instead of a plain iterator: exact resume and disjoint sharding both
need "document number q of source s" to be cheap and deterministic. At start each
source is scanned once (JSONL line offsets, Parquet row counts from metadata,
one document per text/code file); a worker then seeks straight to the documents of
its shard, and a resumed run re-opens at the recorded position without replaying
the stream. Bad records are found lazily when read: any failure while reading,
decoding or validating one record skips that record, counts it by reason and warns
(once per reason and process) with the file and line; the run goes on. A source that
cannot be indexed at all (missing, empty, unreadable, not its kind's format) is the
user's to fix and fails at start with :class:`~tide_lightning.errors.UserError`.
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

# The source group of the run config is the one SourceSpec; defined there so that loading a
# config does not import this package.
from tide_lightning.config import SourceSpec
from tide_lightning.errors import UserError

log = logging.getLogger(__name__)

# Why a record was skipped (docs/data.md explains each); logged as data/skipped_<reason>.
# Append only: checkpoints store the counts by name, so older ones still load.
SKIP_REASONS = (
    "malformed_json",  # not parseable JSON (syntax, >4300-digit integer, nesting too deep)
    "non_utf8",  # bytes that are not UTF-8, or a lone surrogate escape such as \ud800
    "empty",  # blank text, or a chat without a non-empty assistant message
    "missing_field",  # not an object, or the document field is absent / null
    "bad_messages",  # messages is not a list of {role, content} strings
    "too_long",  # over max_doc_chars characters
    "no_response",  # the answer starts beyond max_length: nothing to supervise
    "bad_field",  # the document field has the wrong type (e.g. a number as text)
    "read_error",  # any other failure while reading the record (I/O error, bad row)
    "tokenize_error",  # the tokenizer or the alignment raised on this record
)
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
# File endings a directory source keeps, per kind (code: SourceSpec.suffixes). A glob or
# a single file is taken as given.
FOLDER_SUFFIXES = {"jsonl": (".jsonl",), "parquet": (".parquet",), "text": TEXT_SUFFIXES}
# A JSON escape spends up to 12 bytes on one character (a \uXXXX surrogate pair), so a
# line over 12 bytes per allowed character is too long whatever it holds; below that the
# exact count is taken after parsing. Plain files: at most 4 bytes per UTF-8 character.
_JSON_BYTES_PER_CHAR = 12
_UTF8_BYTES_PER_CHAR = 4
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """One usable document: raw ``text`` or chat ``messages`` (exactly one is set)."""

    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    where: str = ""


class SkipLog:
    """Counts skipped records by reason; warns (file and line) for the first of each reason.

    One warning per reason and process keeps a corpus with a million bad lines from
    flooding the log while still showing one example of every kind of problem; the
    counts reach TensorBoard as ``data/skipped_<reason>``.

    Args:
        max_warnings: warnings per reason (0 silences it, e.g. when replaying reads).
    """

    def __init__(self, max_warnings: int = 1) -> None:
        self.counts: Counter[str] = Counter()
        self.max_warnings = max_warnings

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        """Count one skipped record; warn while this reason is under ``max_warnings``."""
        self.counts[reason] += 1
        if self.counts[reason] <= self.max_warnings:
            more = " (further ones are only counted)" if self.counts[reason] == 1 else ""
            log.warning(
                "skipped record (%s) at %s%s%s",
                reason,
                where,
                f": {_clip(detail)}" if detail else "",
                more,
            )


def _clip(detail: str, limit: int = 200) -> str:
    return detail if len(detail) <= limit else detail[:limit] + "..."


def resolve_files(spec: SourceSpec) -> list[Path]:
    """Expand a spec's path (file, directory or glob) into a sorted list of files.

    A directory keeps only the files with its kind's endings (:data:`FOLDER_SUFFIXES`,
    ``spec.suffixes`` for code) and no hidden files; a glob or a file is taken as given.

    Raises:
        FileNotFoundError: nothing matches the path (the message names it).
    """
    p = spec.path
    if any(ch in p for ch in "*?["):
        files = [Path(f) for f in glob.glob(p, recursive=True) if os.path.isfile(f)]
    elif os.path.isdir(p):
        suffixes = spec.suffixes if spec.kind == "code" else FOLDER_SUFFIXES[spec.kind]
        files = [
            f
            for f in Path(p).rglob("*")
            if f.is_file()
            and f.name.endswith(tuple(suffixes))
            and not any(part.startswith(".") for part in f.relative_to(p).parts)
        ]
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
            if (line[len(_BOM) :] if n == 1 and line.startswith(_BOM) else line).strip():
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
                raise UserError(f"data source hf:{self.spec.path} ({self.spec.split}) is empty")
            return
        self.files = resolve_files(self.spec)
        file_of, offset, line = [], [], []
        for fi, f in enumerate(self.files):
            off, ln = _index_file(kind, f)
            file_of.append(np.full(len(off), fi, np.int64))
            offset.append(off)
            line.append(ln)
        self._file_of = np.concatenate(file_of)
        self._offset = np.concatenate(offset)
        self._line = np.concatenate(line)
        if len(self._offset) == 0:
            raise UserError(f"data source {kind}:{self.spec.path} holds no documents")

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
        """Read document ``i``; returns None (and counts the reason) when it is unusable.

        Never raises for a bad record: whatever one record does (bad bytes, a JSON
        integer of 5,000 digits, nesting 100,000 deep, a lone surrogate, a wrong type,
        an I/O error) is counted under a reason of :data:`SKIP_REASONS`.
        """
        where = self.where(i)
        try:
            return self._read(i, where, skips)
        except UnicodeDecodeError as e:
            skips.skip("non_utf8", where, str(e))
        except Exception as e:  # one record must never stop the run
            skips.skip("read_error", where, f"{type(e).__name__}: {e}")
        return None

    def _read(self, i: int, where: str, skips: SkipLog) -> Record | None:
        kind = self.spec.kind
        if kind == "jsonl":
            raw = self._read_line(i)
            if len(raw) > self.max_doc_chars * _JSON_BYTES_PER_CHAR + 4096:
                skips.skip("too_long", where, f"{len(raw)} bytes")
                return None
            text = raw.decode("utf-8")
            try:
                obj = json.loads(text)
            except (ValueError, RecursionError) as e:  # syntax, huge integers, deep nesting
                skips.skip("malformed_json", where, f"{type(e).__name__}: {e}")
                return None
            return self._from_object(obj, where, skips)
        if kind == "parquet":
            return self._from_object(self._read_row(i), where, skips)
        if kind == "hf":
            return self._from_object(self._hf[int(self._offset[i])], where, skips)
        path = self.files[int(self._file_of[i])]
        size = path.stat().st_size
        if size > self.max_doc_chars * _UTF8_BYTES_PER_CHAR:
            skips.skip("too_long", where, f"{size} bytes")
            return None
        return self._from_value(path.read_bytes().decode("utf-8-sig"), where, skips)

    def _read_line(self, i: int) -> bytes:
        fi = int(self._file_of[i])
        handle = self._cache.get(f"fh{fi}")
        if handle is None:
            handle = self._cache[f"fh{fi}"] = open(self.files[fi], "rb")  # noqa: SIM115
        offset = int(self._offset[i])
        handle.seek(offset)
        line = handle.readline()
        return line[len(_BOM) :] if offset == 0 and line.startswith(_BOM) else line

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
        value = obj.get(field)
        if value is None:
            skips.skip("missing_field", where, f"no field {field!r}")
            return None
        # A field picked by name has the type its name promises: {"messages": "hi"} is a
        # broken chat, not the text "hi". An explicit field may hold either form.
        if self.spec.field is None and field == "messages" and not isinstance(value, list):
            skips.skip("bad_messages", where, f"messages is a {type(value).__name__}")
            return None
        if self.spec.field is None and field == "text" and not isinstance(value, str):
            skips.skip("bad_field", where, f"text is a {type(value).__name__}, not a string")
            return None
        return self._from_value(value, where, skips)

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
            if not _is_unicode(value):
                skips.skip("non_utf8", where, "lone surrogate in the text")
                return None
            return Record(text=value, where=where)
        if isinstance(value, (list, tuple)):
            return _messages_record(value, where, skips, self.max_doc_chars)
        skips.skip("bad_field", where, f"document is a {type(value).__name__}")
        return None


def _is_unicode(text: str) -> bool:
    """False for text no tokenizer can encode: a lone surrogate (JSON ``"\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _index_file(kind: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, 1-based lines) of the documents of one file, or a one-line UserError."""
    try:
        if kind == "jsonl":
            return _jsonl_line_offsets(path)
        if kind == "parquet":
            import pyarrow.parquet as pq

            try:
                n = pq.ParquetFile(path).metadata.num_rows
            except OSError:
                raise
            except Exception as e:  # pyarrow's ArrowInvalid: not a Parquet file
                raise UserError(f"data source parquet:{path}: not a Parquet file ({e})") from None
            return np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64)
        if not os.access(path, os.R_OK):
            raise PermissionError(f"Permission denied: {str(path)!r}")
        return np.zeros(1, np.int64), np.ones(1, np.int64)
    except OSError as e:
        raise UserError(f"data source {kind}:{path}: cannot read ({e.strerror or e})") from None


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
    if not all(_is_unicode(m["role"]) and _is_unicode(m["content"]) for m in msgs):
        skips.skip("non_utf8", where, "lone surrogate in a message")
        return None
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
    """Index one source; fails at once, naming the path, if it is missing or empty.

    Args:
        spec: the source.
        max_doc_chars: longer documents are skipped (counted as ``too_long``).

    Raises:
        FileNotFoundError: the path matches nothing.
        UserError: the source is empty, unreadable, or not its kind's format.
    """
    return DocumentSource(spec, max_doc_chars)
