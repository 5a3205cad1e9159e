"""Chunk alignment of a conversation rendered by each side's own chat template.

Each tokenizer renders the conversation with its own template (Qwen3 with thinking
disabled) and encodes the rendered string in one piece, as at training time. The
message contents are located in each rendering by first rendering the same
conversation with unique sentinel strings as contents: the text between
sentinels is the template's own text, so a content equal to a role name or
repeated elsewhere is still found at the right place. Only contents that render
to the same text on both sides are aligned, and only tokens lying entirely
inside such a content take part, so template tokens never enter a chunk.

Prompt labels: a token is a response token when it starts inside a supervised
assistant content or in the end-of-turn text that follows it, up to and including
the EOS token's text; every other token (system, user, template, unsupervised
turns) is prompt. Which assistant turns are supervised is the ``supervision`` rule:
``last_turn`` (the published runs: only the final assistant turn, everything before
it is context) or ``all_turns``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tide_lightning.method.alignment.byte_tables import byte_table
from tide_lightning.method.alignment.spans import (
    TokenSpans,
    find_chunks,
    spans_from_offsets,
    utf8_char_offsets,
)
from tide_lightning.method.alignment.texts import ChunkAlignment, make_alignment

if TYPE_CHECKING:  # annotations only: the alignment never imports transformers
    from transformers import PreTrainedTokenizerBase

SUPERVISION = ("last_turn", "all_turns")
"""Supervision rules: the final assistant turn only (published), or every assistant turn."""


def supervised_turns(roles: list[str], supervision: str = "last_turn") -> list[bool]:
    """Which messages are supervised answers under a supervision rule.

    Args:
        roles: the role of each message.
        supervision: ``last_turn`` (only the last assistant message; the published SFT
            masks everything before it as prompt) or ``all_turns`` (every assistant message).

    Returns:
        One flag per message.
    """
    if supervision not in SUPERVISION:
        raise ValueError(f"supervision must be one of {SUPERVISION}, got {supervision!r}")
    flags = [r == "assistant" for r in roles]
    if supervision == "last_turn" and any(flags):
        last = len(flags) - 1 - flags[::-1].index(True)
        flags = [i == last for i in range(len(flags))]
    return flags


def response_flags(
    token_starts: np.ndarray, regions: list[tuple[int, int, int]], supervised: list[bool]
) -> np.ndarray:
    """Bool[N]: tokens starting inside a supervised content or its end-of-turn text.

    Args:
        token_starts: int64[N] first character of each token in the rendered chat.
        regions: per message ``(start, end, tail_end)`` from :func:`content_regions`.
        supervised: per message, whether it is a supervised answer.
    """
    flags = np.zeros(len(token_starts), dtype=bool)
    for (start, _, tail_end), keep in zip(regions, supervised, strict=True):
        if keep and start >= 0:
            flags |= (token_starts >= start) & (token_starts < tail_end)
    return flags


@dataclass
class ChatAlignment(ChunkAlignment):
    """A `ChunkAlignment` of a rendered conversation, with prompt labels per token.

    Attributes:
        student_prompt: per student token, True for prompt and template tokens.
        teacher_prompt: per teacher token, likewise.
    """

    student_prompt: list[bool] = field(default_factory=list)
    teacher_prompt: list[bool] = field(default_factory=list)


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The tokenizer's own chat template applied to `messages` (thinking disabled)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)


def content_regions(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int, int]]]:
    """Render a conversation and find each message content in it.

    Args:
        tokenizer: fast tokenizer with a chat template.
        messages: `{"role", "content"}` dicts.

    Returns:
        `(rendered, regions)`: the rendered string and, per message, `(start, end,
        tail_end)` character positions: the content is `rendered[start:end]`, and
        `rendered[end:tail_end]` is the end-of-turn text up to and including the EOS token
        (empty when the template writes no EOS there). `(-1, -1, -1)` for a message the
        template does not render.

    Raises:
        ValueError: when the template's own text cannot be matched in the rendering.
    """
    marks = [f"@@TIDE_CONTENT_{i}@@" for i in range(len(messages))]
    rendered = render_chat(tokenizer, messages)
    skeleton = render_chat(
        tokenizer, [dict(m, content=k) for m, k in zip(messages, marks, strict=True)]
    )
    found = [(skeleton.find(k), i) for i, k in enumerate(marks)]
    order = sorted((p, i) for p, i in found if p >= 0)
    pieces, prev = [], 0
    for p, i in order:
        pieces.append(skeleton[prev:p])
        prev = p + len(marks[i])
    pieces.append(skeleton[prev:])
    eos = tokenizer.eos_token or ""
    regions = [(-1, -1, -1)] * len(messages)
    pos = 0
    for k, (_, i) in enumerate(order):
        if not rendered.startswith(pieces[k], pos):
            raise ValueError(f"chat template text {pieces[k]!r} not found where expected")
        start = pos + len(pieces[k])
        after = pieces[k + 1]
        content = messages[i]["content"]
        if rendered.startswith(content, start) and rendered.startswith(after, start + len(content)):
            end = start + len(content)
        else:  # the template rewrote the content (e.g. stripped newlines): take what it wrote
            end = _find_piece(rendered, after, start, last=k + 1 == len(order))
            if end < start:
                raise ValueError(f"content of message {i} not found in the rendered chat")
        cut = after.find(eos) if eos else -1
        regions[i] = (start, end, end + cut + len(eos) if cut >= 0 else end)
        pos = end
    return rendered, regions


def _find_piece(rendered: str, piece: str, start: int, last: bool) -> int:
    """Where the template text `piece` following a content begins, or -1."""
    if last:
        return len(rendered) - len(piece) if rendered.endswith(piece) else -1
    return rendered.find(piece, start) if piece else -1


def align_messages(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    *,
    max_student_len: int | None = None,
    max_teacher_len: int | None = None,
    supervision: str = "last_turn",
) -> ChatAlignment:
    """Align a conversation rendered and tokenized by each side's own chat template.

    Args:
        student_tokenizer: fast tokenizer of the student (its template is used).
        teacher_tokenizer: fast tokenizer of the teacher.
        messages: `{"role": "system" | "user" | "assistant", "content": str}` dicts.
        max_student_len: keep at most this many student tokens.
        max_teacher_len: keep at most this many teacher tokens.
        supervision: which assistant turns are response tokens (:data:`SUPERVISION`).

    Returns:
        The alignment: chunks inside message contents that render identically on both
        sides, and per-token prompt labels for both sides.
    """
    s_text, s_regions = content_regions(student_tokenizer, messages)
    t_text, t_regions = content_regions(teacher_tokenizer, messages)
    shared = [
        i
        for i, (s, t) in enumerate(zip(s_regions, t_regions, strict=True))
        if s[0] >= 0 and t[0] >= 0 and s[1] > s[0] and s_text[s[0] : s[1]] == t_text[t[0] : t[1]]
    ]
    supervised = supervised_turns([m["role"] for m in messages], supervision)
    s_ids, s_spans, s_prompt = _encode_side(
        student_tokenizer, s_text, s_regions, shared, supervised, max_student_len
    )
    t_ids, t_spans, t_prompt = _encode_side(
        teacher_tokenizer, t_text, t_regions, shared, supervised, max_teacher_len
    )
    rows = find_chunks(s_spans, t_spans)
    base = make_alignment(s_ids, t_ids, rows)
    return ChatAlignment(
        student_ids=base.student_ids,
        teacher_ids=base.teacher_ids,
        spans=base.spans,
        student_left_out=base.student_left_out,
        teacher_left_out=base.teacher_left_out,
        student_prompt=s_prompt,
        teacher_prompt=t_prompt,
    )


def _encode_side(tokenizer, text, regions, shared, supervised, max_len):
    """Ids, spans on the shared-content axis, and prompt labels of one side."""
    enc = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False)
    ids = enc.ids[:max_len] if max_len is not None else enc.ids
    offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)[: len(ids)]
    ids_np = np.asarray(ids, dtype=np.int64)
    is_response = response_flags(offsets[:, 0], regions, supervised)

    spans = spans_from_offsets(byte_table(tokenizer), ids_np, offsets, text)
    cb = utf8_char_offsets(text)
    starts = np.array([cb[regions[i][0]] for i in shared], dtype=np.int64)
    ends = np.array([cb[regions[i][1]] for i in shared], dtype=np.int64)
    # Place the shared contents one after another with a one-byte gap, so no chunk
    # can run from one message into the next.
    bases = np.concatenate([[0], np.cumsum(ends - starts + 1)[:-1]]).astype(np.int64)
    region = np.searchsorted(starts, spans.lo, side="right") - 1
    safe = np.maximum(region, 0)
    inside = (region >= 0) & (spans.lo >= starts[safe] if len(starts) else False)
    inside &= spans.hi <= (ends[safe] if len(ends) else 0)
    shift = bases[safe] - starts[safe] if len(starts) else 0
    placed = TokenSpans(spans.index, spans.lo + shift, spans.hi + shift, spans.ok).select(inside)
    return list(ids), placed, (~is_response).tolist()
