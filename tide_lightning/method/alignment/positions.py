"""Token positions of one conversation under two chat templates and one vocabulary.

The shared pipeline's aligned teacher view (docs/method.md §14, the published
``*_aligned`` modes): student and teacher tokenizers share their vocabulary
(WeDLM and the Qwen3 student), but each renders the conversation with its own
chat template, so the same answer token sits at different positions on the two
sides. This module pairs those positions.

Only assistant contents that render to the same text on both sides take part
(located with :func:`~tide_lightning.method.alignment.chat.content_regions`). Inside
such a content a student token and a teacher token are paired when they have the
same id and cover the same characters of the content; a token that straddles the
content's edge (merged with template text) or that the two sides split
differently is left unpaired, never mis-paired. The published code pairs the
tokens inside each content by their rank instead, which shifts every later pair
by one after the first difference; with identical tokenizations both agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from tide_lightning.method.alignment.chat import (
    content_regions,
    response_flags,
    supervised_turns,
)


@dataclass
class PositionAlignment:
    """Both sides' tokens of a conversation and the pairs of aligned positions.

    Attributes:
        student_ids: the student's rendering, tokenized (no truncation).
        teacher_ids: the teacher's rendering, tokenized (no truncation).
        student_answer: per student token, True for supervised answer tokens
            (the chosen assistant turns with their end-of-turn text).
        pairs: int64[N, 2] rows ``(student_pos, teacher_pos)``, increasing in both
            columns; ``student_ids[s] == teacher_ids[t]`` for every row.
    """

    student_ids: list[int]
    teacher_ids: list[int]
    student_answer: list[bool]
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))


def _content_tokens(
    ids: np.ndarray, offsets: np.ndarray, region: tuple[int, int, int]
) -> dict[tuple[int, int, int, int], int]:
    """Tokens lying inside one content, keyed by (start, end, id, repeat) relative to it.

    Args:
        ids: int64[N] token ids of the rendering.
        offsets: int64[N, 2] character offsets of the tokens.
        region: the content's ``(start, end, tail_end)`` characters.
    """
    start, end = region[0], region[1]
    a, b = offsets[:, 0], offsets[:, 1]
    inside = np.flatnonzero((a >= start) & (b <= end) & (a < b))
    out: dict[tuple[int, int, int, int], int] = {}
    seen: defaultdict[tuple[int, int, int], int] = defaultdict(int)
    lows, highs = (a[inside] - start).tolist(), (b[inside] - start).tolist()
    for pos, lo, hi in zip(inside.tolist(), lows, highs, strict=True):
        key = (lo, hi, int(ids[pos]))
        # Byte-level pieces of one character share its offsets: count repeats.
        out[(*key, seen[key])] = pos
        seen[key] += 1
    return out


def align_positions(
    student_tokenizer, teacher_tokenizer, messages: list[dict], supervision: str = "last_turn"
) -> PositionAlignment:
    """Render a conversation with each side's own template and pair the answer tokens.

    Args:
        student_tokenizer: fast tokenizer of the student (its chat template is used).
        teacher_tokenizer: fast tokenizer of the teacher, same vocabulary (its own template).
        messages: ``{"role", "content"}`` dicts.
        supervision: which assistant turns are the student's answer tokens
            (``last_turn`` or ``all_turns``). Every assistant content is paired either
            way (as published); unsupervised ones are never masked, so never distilled.

    Returns:
        The :class:`PositionAlignment`.
    """
    s_text, s_regions = content_regions(student_tokenizer, messages)
    t_text, t_regions = content_regions(teacher_tokenizer, messages)
    s_enc = student_tokenizer.backend_tokenizer.encode(s_text, add_special_tokens=False)
    t_enc = teacher_tokenizer.backend_tokenizer.encode(t_text, add_special_tokens=False)
    s_ids, t_ids = np.asarray(s_enc.ids, dtype=np.int64), np.asarray(t_enc.ids, dtype=np.int64)
    s_off = np.asarray(s_enc.offsets, dtype=np.int64).reshape(-1, 2)
    t_off = np.asarray(t_enc.offsets, dtype=np.int64).reshape(-1, 2)
    rows: list[tuple[int, int]] = []
    for m, sr, tr in zip(messages, s_regions, t_regions, strict=True):
        if m["role"] != "assistant" or sr[0] < 0 or tr[0] < 0:
            continue
        if s_text[sr[0] : sr[1]] != t_text[tr[0] : tr[1]]:
            continue  # a template rewrote this content on one side only
        s_tok = _content_tokens(s_ids, s_off, sr)
        t_tok = _content_tokens(t_ids, t_off, tr)
        rows += sorted((s_tok[k], t_tok[k]) for k in s_tok.keys() & t_tok.keys())
    pairs = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
    roles = [m["role"] for m in messages]
    answer = response_flags(s_off[:, 0], s_regions, supervised_turns(roles, supervision))
    return PositionAlignment(s_ids.tolist(), t_ids.tolist(), answer.tolist(), pairs)


def cut_pairs(pairs: np.ndarray, student_len: int, teacher_len: int) -> tuple[np.ndarray, int]:
    """The published cut: pairs the student keeps, the teacher cut after the last one.

    The student is truncated at ``student_len`` and pairs beyond it are dropped; the
    teacher sequence ends at the last remaining aligned token (it never needs what
    follows), and at ``teacher_len`` at most, dropping pairs beyond that too.

    Args:
        pairs: int64[N, 2] ``(student_pos, teacher_pos)`` rows, increasing.
        student_len: student tokens kept.
        teacher_len: the teacher length limit (``teacher_max_length``).

    Returns:
        ``(pairs, teacher_cut)``: the kept rows and the teacher length to keep (the
        limit itself when no pair remains).
    """
    kept = pairs[pairs[:, 0] < student_len]
    cut = int(kept[-1, 1]) + 1 if len(kept) else teacher_len
    cut = min(cut, teacher_len)
    return kept[kept[:, 1] < cut], cut
