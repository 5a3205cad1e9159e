"""Token byte spans in a shared text and the chunks where both sides' boundaries meet.

Both tokenizations are placed on one coordinate axis, the UTF-8 bytes of the
text: token i covers bytes `[lo[i], hi[i])`, and `ok[i]` says whether its own
bytes equal those text bytes (False for a special token written in the text, an
`<unk>`, or a token changed by a normaliser such as NFC or lowercasing).

A chunk closes at every byte position where a token with text ends on both sides
(the values common to both sorted `hi` arrays), so chunks are the minimal spans that
hold whole tokens of both sides; a zero-width token (a lone SentencePiece prefix `▁`)
closes nothing and belongs to the chunk that follows it. A chunk is kept only when, on both sides, every
token in it is `ok`, the tokens tile the span without gaps, and they are
consecutive in the id sequence; then both sides' bytes equal the same text bytes.
Everything else is left out, never mis-aligned. The whole search is a handful of
vectorised NumPy calls per document.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tide_lightning.method.alignment.byte_tables import TokenByteTable

_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)


@dataclass(frozen=True)
class TokenSpans:
    """Tokens of one side that cover text, in order.

    Tokens covering no text (BOS/EOS added by the tokenizer, a prefix-space-only `▁`,
    template tokens outside the aligned regions) are absent.

    Attributes:
        index: int64[K], position of each token in its id sequence (increasing).
        lo: int64[K], first text byte covered.
        hi: int64[K], one past the last text byte covered (non-decreasing).
        ok: bool[K], True where the token's own bytes equal text bytes `[lo, hi)`.
    """

    index: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    ok: np.ndarray

    def select(self, keep: np.ndarray) -> TokenSpans:
        """The spans where `keep` (bool[K]) is True."""
        return TokenSpans(self.index[keep], self.lo[keep], self.hi[keep], self.ok[keep])


def utf8_char_offsets(text: str) -> np.ndarray:
    """Byte offset of every character boundary of `text`.

    Returns:
        int64[len(text) + 1]: entry c is the UTF-8 byte offset of character c.
    """
    cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    out = np.zeros(len(cp) + 1, dtype=np.int64)
    np.cumsum(width, out=out[1:])
    return out


def spans_from_bytes(
    table: TokenByteTable, ids: np.ndarray, text_bytes: np.ndarray
) -> TokenSpans | None:
    """Fast path: spans from cumulative byte lengths, when the tokens spell the text.

    Accepted when the tokens' concatenated bytes equal a prefix of the text (a prefix,
    because of truncation), or do so after dropping one leading space that the tokenizer
    prepended (SentencePiece's prefix `▁`). Special tokens have no bytes and drop out. A
    prefix `▁` that stands alone (Mistral v1 before CJK or emoji: `▁`, `混`) keeps a
    zero-width span at the start, so it joins the first chunk, as a merged prefix
    (`▁The`) does: the chunk's probability then holds that token's factor too.

    Args:
        table: byte table of the tokenizer.
        ids: int64[N] token ids.
        text_bytes: uint8[T] the UTF-8 text.

    Returns:
        Spans with every `ok` True, or None when the tokens do not spell the text (a
        normaliser, a special token or `<unk>` in it): use `spans_from_offsets` then.
    """
    decoded = table.gather(ids)
    n = len(decoded)
    lens = table.lengths[ids].copy()
    keep = lens > 0
    if n <= len(text_bytes) and np.array_equal(decoded, text_bytes[:n]):
        pass
    elif n >= 1 and decoded[0] == 0x20 and np.array_equal(decoded[1:], text_bytes[: n - 1]):
        lens[np.argmax(keep)] -= 1
    else:
        return None
    hi = np.cumsum(lens)
    index = np.flatnonzero(keep)
    return TokenSpans(index, (hi - lens)[keep], hi[keep], np.ones(len(index), dtype=bool))


def spans_from_offsets(
    table: TokenByteTable,
    ids: np.ndarray,
    char_offsets: np.ndarray,
    text: str,
) -> TokenSpans:
    """General path: spans from the tokenizer's character offsets, each token checked.

    Consecutive tokens with the same offsets (byte-fallback pieces of one character) form
    a group; a group is `ok` when its bytes equal the text it covers, possibly after
    dropping one prepended space; its tokens then split the span by their byte lengths.
    For a whitespace-dropping tokenizer (WordPiece) a token owns the whitespace gap before it.

    Args:
        table: byte table of the tokenizer.
        ids: int64[N] token ids.
        char_offsets: int64[N, 2] (start, end) character offsets into `text`.
        text: the text that was tokenized.

    Returns:
        Spans of the tokens that cover text.
    """
    text_bytes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    cb = utf8_char_offsets(text)
    if len(ids) == 0:
        return _empty()
    lo = cb[char_offsets[:, 0]]
    hi = cb[char_offsets[:, 1]]
    covers = hi > lo
    index = np.flatnonzero(covers)
    if len(index) == 0:
        return _empty()
    ids, lo, hi = ids[index], lo[index], hi[index]
    lens = table.lengths[ids].copy()
    special = table.special[ids]

    new_group = np.ones(len(ids), dtype=bool)
    new_group[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    group = np.cumsum(new_group) - 1
    first = np.flatnonzero(new_group)
    g_lo, g_hi = lo[first], hi[first]
    g_len = np.bincount(group, weights=lens, minlength=len(first)).astype(np.int64)
    g_special = np.bincount(group, weights=special, minlength=len(first)) > 0
    decoded = table.gather(ids)
    d_start = np.concatenate([[0], np.cumsum(lens)[:-1]])[first]
    width = g_hi - g_lo
    exact = g_len == width
    safe_start = np.minimum(d_start, max(len(decoded) - 1, 0))
    strip = ~exact & (g_len == width + 1) & (len(decoded) > 0) & (decoded[safe_start] == 0x20)
    compare = np.where(exact | strip, width, 0)
    g_ok = (exact | strip) & ~g_special
    if compare.sum():
        owner = np.repeat(np.arange(len(first)), compare)
        step = np.arange(int(compare.sum())) - np.repeat(np.cumsum(compare) - compare, compare)
        same = (
            decoded[np.repeat(d_start + strip, compare) + step]
            == text_bytes[np.repeat(g_lo, compare) + step]
        )
        g_ok &= np.bincount(owner, weights=~same, minlength=len(first)) == 0

    lens[first[strip & g_ok]] -= 1
    ok = g_ok[group]
    within = np.cumsum(lens) - lens - (np.cumsum(lens) - lens)[first][group]
    tok_lo = np.where(ok, g_lo[group] + within, lo)
    tok_hi = np.where(ok, tok_lo + lens, hi)
    spans = TokenSpans(index, tok_lo, tok_hi, ok).select(~ok | (lens > 0))
    # A normaliser can leave text between tokens uncovered (NFC maps "e\u0301" to one
    # token whose offsets end early): give that text to the rejected token before it, so
    # the next chunk's start stays exact.
    next_lo = np.append(spans.lo[1:], spans.hi[-1:])
    spans = TokenSpans(
        spans.index, spans.lo, np.where(spans.ok, spans.hi, np.maximum(spans.hi, next_lo)), spans.ok
    )
    if table.drops_whitespace:
        spans = _absorb_whitespace_gaps(spans, text_bytes)
    return spans


def _absorb_whitespace_gaps(spans: TokenSpans, text_bytes: np.ndarray) -> TokenSpans:
    """Extend each token back over a whitespace-only gap before it."""
    is_ws = np.isin(text_bytes, _WHITESPACE)
    ws_cum = np.concatenate([[0], np.cumsum(is_ws)])
    prev_hi = np.concatenate([[0], spans.hi[:-1]])
    gap = spans.lo - prev_hi
    all_ws = (gap > 0) & (ws_cum[spans.lo] - ws_cum[np.minimum(prev_hi, spans.lo)] == gap)
    return TokenSpans(spans.index, np.where(all_ws, prev_hi, spans.lo), spans.hi, spans.ok)


def _empty() -> TokenSpans:
    z = np.zeros(0, dtype=np.int64)
    return TokenSpans(z, z, z, np.zeros(0, dtype=bool))


def find_chunks(student: TokenSpans, teacher: TokenSpans) -> np.ndarray:
    """Minimal aligned chunks of two tokenizations of the same text.

    Args:
        student: spans of the student tokens.
        teacher: spans of the teacher tokens, on the same byte axis.

    Returns:
        int64[C, 4]: rows `(s_start, s_end, t_start, t_end)`, half-open token index ranges
        into each side's id sequence, in text order and disjoint.
    """
    ends = _common_sorted(student.hi[student.hi > student.lo], teacher.hi[teacher.hi > teacher.lo])
    if len(ends) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    s_first, s_stop, s_good = _chunk_ranges(student, ends)
    t_first, t_stop, t_good = _chunk_ranges(teacher, ends)
    valid = s_good & t_good & (student.lo[s_first] == teacher.lo[t_first])
    rows = np.stack(
        [
            student.index[s_first],
            student.index[s_stop - 1] + 1,
            teacher.index[t_first],
            teacher.index[t_stop - 1] + 1,
        ],
        axis=1,
    )
    return rows[valid]


def _common_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Values present in both non-decreasing arrays, ascending and unique.

    A binary search of `a` in `b`: cheaper than `np.intersect1d`, which sorts again.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    common = a[b[pos] == a]
    if len(common) > 1:
        common = common[np.concatenate([[True], common[1:] != common[:-1]])]
    return common


def _chunk_ranges(side: TokenSpans, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """For each common end, the side's token range (first, stop) and whether it is clean.

    Chunk k holds the tokens whose end lies in `(ends[k-1], ends[k]]`. It is clean when all
    of them are `ok`, each starts where the previous one ends, and their id positions are
    consecutive (no special or template token hidden inside).
    """
    stop = np.searchsorted(side.hi, ends, side="right")
    first = np.concatenate([[0], stop[:-1]])
    bad_tok = np.concatenate([[0], np.cumsum(~side.ok)])
    link = np.ones(len(side.hi), dtype=bool)
    link[1:] = side.lo[1:] == side.hi[:-1]
    bad_link = np.concatenate([[0], np.cumsum(~link)])
    clean = (bad_tok[stop] == bad_tok[first]) & (bad_link[stop] == bad_link[first + 1])
    clean &= side.index[stop - 1] - side.index[first] + 1 == stop - first
    return first, stop, clean
