"""Chunk alignment of one text under two tokenizers (docs/method.md §9)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tide_lightning.method.alignment.byte_tables import byte_table
from tide_lightning.method.alignment.spans import (
    TokenSpans,
    find_chunks,
    spans_from_bytes,
    spans_from_offsets,
)

if TYPE_CHECKING:  # annotations only: the alignment never imports transformers
    from transformers import PreTrainedTokenizerBase


@dataclass
class ChunkAlignment:
    """Two tokenizations of one text and the chunks where their bytes coincide.

    Attributes:
        student_ids: the student tokenizer's ids, special tokens as it adds them.
        teacher_ids: the teacher tokenizer's ids, likewise.
        spans: int64[C, 4] rows `(s_start, s_end, t_start, t_end)`: half-open token
            ranges, in order, disjoint, each the minimal span whose byte strings coincide
            on both sides. Kept as one array (the data pipeline consumes it vectorised);
            :attr:`chunks` gives the same rows as a list of tuples.
        student_left_out: student tokens in no chunk (BOS, template, cut or normalised text).
        teacher_left_out: teacher tokens in no chunk.
    """

    student_ids: list[int]
    teacher_ids: list[int]
    spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    student_left_out: int = 0
    teacher_left_out: int = 0

    @property
    def chunks(self) -> list[tuple[int, int, int, int]]:
        """The chunks as `(s_start, s_end, t_start, t_end)` tuples (built on access)."""
        return [tuple(row) for row in self.spans.tolist()]

    @property
    def num_chunks(self) -> int:
        """Number of chunks."""
        return len(self.spans)

    def coverage(self) -> float:
        """Share of student tokens inside a chunk (1.0 for an empty encoding)."""
        n = len(self.student_ids)
        return 1.0 if n == 0 else (n - self.student_left_out) / n


def align_token_ids(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    text: str,
    student_ids: list[int],
    teacher_ids: list[int],
    student_offsets=None,
    teacher_offsets=None,
) -> np.ndarray:
    """The alignment step alone: chunks of two given tokenizations of `text`.

    Args:
        student_tokenizer: tokenizer that produced `student_ids`.
        teacher_tokenizer: tokenizer that produced `teacher_ids`.
        text: the text both sides encode (possibly truncated encodings of it).
        student_ids: N_s ids.
        teacher_ids: N_t ids.
        student_offsets: `(N_s, 2)` character offsets, or a callable returning them; only
            used when the tokens do not spell the text (normaliser, special tokens, unk).
            When None, the text is re-encoded to get them.
        teacher_offsets: likewise for the teacher.

    Returns:
        int64[C, 4] chunk rows `(s_start, s_end, t_start, t_end)`.
    """
    text_bytes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    s = _spans(student_tokenizer, text, text_bytes, student_ids, student_offsets)
    t = _spans(teacher_tokenizer, text, text_bytes, teacher_ids, teacher_offsets)
    return find_chunks(s, t)


def _spans(tokenizer, text, text_bytes, ids, offsets) -> TokenSpans:
    table = byte_table(tokenizer)
    ids_np = np.asarray(ids, dtype=np.int64)
    spans = spans_from_bytes(table, ids_np, text_bytes)
    if spans is not None:
        return spans
    if callable(offsets):
        offsets = offsets()
    if offsets is None:
        # Re-encode with the same special-token setting: the ids are a prefix of it.
        add_special = len(ids) > 0 and bool(table.special[ids_np[0]])
        offsets = tokenizer.backend_tokenizer.encode(text, add_special_tokens=add_special).offsets
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[: len(ids)]
    return spans_from_offsets(table, ids_np, offsets, text)


def align_texts(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    text: str,
    *,
    max_student_len: int | None = None,
    max_teacher_len: int | None = None,
    add_special_tokens: bool = True,
) -> ChunkAlignment:
    """Tokenize `text` with both tokenizers and align the encodings into chunks.

    Each side keeps its own natural encoding (special tokens as it adds them), truncated
    to its maximum length by dropping tokens from the end; a chunk cut by truncation is
    dropped.

    Args:
        student_tokenizer: transformers fast tokenizer of the student.
        teacher_tokenizer: transformers fast tokenizer of the teacher.
        text: any text (may be empty).
        max_student_len: keep at most this many student tokens.
        max_teacher_len: keep at most this many teacher tokens.
        add_special_tokens: let each tokenizer add its BOS/EOS.

    Returns:
        The alignment.
    """
    s_enc = student_tokenizer.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens)
    t_enc = teacher_tokenizer.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens)
    s_ids = s_enc.ids[:max_student_len] if max_student_len is not None else s_enc.ids
    t_ids = t_enc.ids[:max_teacher_len] if max_teacher_len is not None else t_enc.ids
    rows = align_token_ids(
        student_tokenizer,
        teacher_tokenizer,
        text,
        s_ids,
        t_ids,
        lambda: s_enc.offsets,
        lambda: t_enc.offsets,
    )
    return make_alignment(s_ids, t_ids, rows)


def make_alignment(student_ids: list[int], teacher_ids: list[int], rows: np.ndarray):
    """Wrap ids and int64[C, 4] chunk rows into a `ChunkAlignment` with left-out counts."""
    s_in = int((rows[:, 1] - rows[:, 0]).sum())
    t_in = int((rows[:, 3] - rows[:, 2]).sum())
    return ChunkAlignment(
        student_ids=list(student_ids),
        teacher_ids=list(teacher_ids),
        spans=np.asarray(rows, dtype=np.int64).reshape(-1, 4),
        student_left_out=len(student_ids) - s_in,
        teacher_left_out=len(teacher_ids) - t_in,
    )
