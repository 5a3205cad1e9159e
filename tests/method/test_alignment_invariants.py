"""Invariant checks shared by the alignment tests."""

from __future__ import annotations

import numpy as np

from tide_lightning.method.alignment import ChunkAlignment, byte_table


def chunk_tokens(al: ChunkAlignment, s_tok, t_tok) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each chunk as (student token strings, teacher token strings)."""
    return [
        (
            tuple(s_tok.convert_ids_to_tokens(al.student_ids[a:b])),
            tuple(t_tok.convert_ids_to_tokens(al.teacher_ids[c:d])),
        )
        for a, b, c, d in al.chunks
    ]


def _token_bytes(tok, ids) -> list[bytes]:
    table = byte_table(tok)
    return [table.token_bytes(i) for i in ids]


def _strip_prefix(pieces: list[bytes], text: bytes) -> list[bytes]:
    """Drop a prefix space the tokenizer prepended (first text token, not in the text)."""
    joined = b"".join(pieces)
    if joined.startswith(b" ") and not text.startswith(joined[: min(len(joined), len(text))]):
        first = next(i for i, p in enumerate(pieces) if p)
        pieces = list(pieces)
        pieces[first] = pieces[first][1:]
    return pieces


def check_invariants(al: ChunkAlignment, s_tok, t_tok, text: str) -> None:
    """Ordered, disjoint, byte-equal to each other and to the text, minimal, counted."""
    text_b = text.encode("utf-8")
    s_bytes = _strip_prefix(_token_bytes(s_tok, al.student_ids), text_b)
    t_bytes = _strip_prefix(_token_bytes(t_tok, al.teacher_ids), text_b)
    prev_s = prev_t = 0
    text_pos = 0
    inside_s = inside_t = 0
    for a, b, c, d in al.chunks:
        assert prev_s <= a < b <= len(al.student_ids), al.chunks
        assert prev_t <= c < d <= len(al.teacher_ids), al.chunks
        prev_s, prev_t = b, d
        inside_s += b - a
        inside_t += d - c
        sb, tb = b"".join(s_bytes[a:b]), b"".join(t_bytes[c:d])
        assert sb == tb and sb, (sb, tb)
        found = text_b.find(sb, text_pos)
        assert found >= 0, sb
        text_pos = found + len(sb)
        # Minimal: no common cumulative byte offset strictly inside the chunk.
        cut_s, cut_t, acc = set(), set(), 0
        for p in s_bytes[a : b - 1]:
            acc += len(p)
            cut_s.add(acc)
        acc = 0
        for p in t_bytes[c : d - 1]:
            acc += len(p)
            cut_t.add(acc)
        assert not ((cut_s & cut_t) - {0}), (sb, s_bytes[a:b], t_bytes[c:d])
        # Never a special token inside a chunk.
        assert not byte_table(s_tok).special[al.student_ids[a:b]].any()
        assert not byte_table(t_tok).special[al.teacher_ids[c:d]].any()
    assert al.student_left_out == len(al.student_ids) - inside_s
    assert al.teacher_left_out == len(al.teacher_ids) - inside_t


def test_checker_rejects_misaligned_and_splittable_chunks(qwen3, mistral_v1):
    import dataclasses

    import pytest

    from tide_lightning.method.alignment import align_texts

    text = "Pay 12345 now"
    good = align_texts(qwen3, mistral_v1, text)
    check_invariants(good, qwen3, mistral_v1, text)
    shifted = [(a, b, c + 1, d + 1) for a, b, c, d in good.chunks[:-1]]
    with pytest.raises(AssertionError):
        check_invariants(
            dataclasses.replace(good, spans=np.array(shifted)), qwen3, mistral_v1, text
        )
    merged = [(good.chunks[0][0], good.chunks[1][1], good.chunks[0][2], good.chunks[1][3])]
    with pytest.raises(AssertionError):
        check_invariants(
            dataclasses.replace(
                good, spans=np.array(merged), student_left_out=0, teacher_left_out=0
            ),
            qwen3,
            mistral_v1,
            text,
        )
