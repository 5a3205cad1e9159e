"""Turn one document into the token fields of one training example.

Pure functions of (tokenizer, document, lengths); no torch, no state. The stream
calls them inside dataloader workers. Conventions (docs/method.md §3): prompt tokens
are never maskable; a sequence is filled with EOS up to a multiple of the block
size and the filling EOS are maskable (supervised); padding comes later, in the
collate step, and therefore starts on a block boundary.

Chat supervision follows ``supervision`` (docs/method.md §14): ``last_turn`` (the
published runs) makes only the final assistant turn and its end-of-turn token
maskable, ``all_turns`` every assistant turn. In the shared pipeline the teacher
either reads the student's own sequence (``teacher_view="same_sequence"``) or the
conversation rendered with its own chat template (``"aligned"``, the published
``*_aligned`` modes), with each student answer token paired to its teacher position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tide_lightning.method.alignment.chat import SUPERVISION
from tide_lightning.method.alignment.tensors import chunk_id_array

TEACHER_VIEWS = ("same_sequence", "aligned")
"""Shared pipeline: the teacher reads the student's tokens, or its own chat rendering."""


@dataclass
class Example:
    """Token fields of one sequence before padding (lists, all of one length per side).

    Attributes:
        input_ids: student token ids, length L_i (a multiple of the block size).
        maskable: per student token, True where it may be masked and is supervised.
        teacher_input_ids: cross pipeline only, teacher token ids, length Lt_i.
        teacher_maskable: cross pipeline only, per teacher token.
        student_chunk_ids: cross pipeline only, chunk index per student token or -1.
        teacher_chunk_ids: cross pipeline only, chunk index per teacher token or -1.
        aligned_teacher_pos: shared pipeline, aligned teacher view only: per student
            token, the position of the same token in ``teacher_input_ids``, or -1.
    """

    input_ids: list[int]
    maskable: list[bool]
    teacher_input_ids: list[int] | None = None
    teacher_maskable: list[bool] | None = None
    student_chunk_ids: list[int] | None = None
    teacher_chunk_ids: list[int] | None = None
    aligned_teacher_pos: list[int] | None = None

    @property
    def num_tokens(self) -> int:
        """Student plus teacher token count (for throughput figures)."""
        return len(self.input_ids) + len(self.teacher_input_ids or ())


def fill_to_block(
    ids: list[int], maskable: list[bool], eos_id: int, block_size: int
) -> tuple[list[int], list[bool]]:
    """Append maskable EOS tokens until the length is a multiple of ``block_size``.

    Args:
        ids: token ids, length n.
        maskable: per-token flags, length n.
        eos_id: the EOS token id.
        block_size: diffusion block size Bk.

    Returns:
        (ids, maskable), length ceil(n / Bk) * Bk; the added tokens are EOS and maskable.
    """
    n_fill = (-len(ids)) % block_size
    return ids + [eos_id] * n_fill, maskable + [True] * n_fill


def response_token_mask(
    tokenizer: Any, messages: Sequence[dict[str, str]], supervision: str = "last_turn"
) -> tuple[list[int], list[bool]]:
    """Tokenize a chat with the tokenizer's template (thinking disabled) and label answers.

    Uses the same content location as the cross pipeline
    (``tide_lightning.method.alignment.chat.content_regions``): a token is an answer token when
    it starts inside a supervised assistant content or in the end-of-turn text after it,
    up to and including the EOS text, so the model learns to stop; all else is prompt.

    Args:
        tokenizer: fast tokenizer with a chat template.
        messages: {role, content} dicts.
        supervision: ``last_turn`` (only the final assistant turn) or ``all_turns``.

    Returns:
        (ids, is_answer), one flag per token.
    """
    import numpy as np

    from tide_lightning.method.alignment.chat import (
        content_regions,
        response_flags,
        supervised_turns,
    )

    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat records need a tokenizer with a chat template")
    text, regions = content_regions(tokenizer, list(messages))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = np.asarray([s for s, _ in enc["offset_mapping"]], dtype=np.int64)
    turns = supervised_turns([m["role"] for m in messages], supervision)
    return list(enc["input_ids"]), response_flags(starts, regions, turns).tolist()


def chat_example(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    max_length: int,
    block_size: int,
    eos_id: int,
    supervision: str = "last_turn",
) -> Example | None:
    """Tokenize a chat: prompt tokens unmaskable, answers maskable, EOS fill, truncation.

    Args:
        tokenizer: a fast Hugging Face tokenizer with a chat template.
        messages: {role, content} dicts.
        max_length: student length limit (a multiple of ``block_size``).
        block_size: diffusion block size.
        eos_id: EOS id used for the block fill.
        supervision: ``last_turn`` or ``all_turns`` (see :func:`response_token_mask`).

    Returns:
        The example, or None when no answer token survives truncation.
    """
    ids, maskable = response_token_mask(tokenizer, messages, supervision)
    ids, maskable = ids[:max_length], maskable[:max_length]
    if not any(maskable):
        return None
    ids, maskable = fill_to_block(ids, maskable, eos_id, block_size)
    return Example(ids, maskable)


def aligned_chat_example(
    student_tokenizer: Any,
    teacher_tokenizer: Any,
    messages: Sequence[dict[str, str]],
    max_length: int,
    teacher_max_length: int,
    block_size: int,
    eos_id: int,
    teacher_eos_id: int,
    supervision: str = "last_turn",
) -> Example | None:
    """A chat for the aligned shared pipeline: the teacher reads its own rendering.

    The student side is :func:`chat_example`'s. The teacher renders the conversation
    with its own chat template; its sequence ends at the last token aligned to a
    student token that survived truncation, at ``teacher_max_length`` at most, and is
    EOS-filled to a multiple of ``block_size`` (the published cut; the fill is never
    distilled, padding comes later and is masked out by the attention mask).

    Args:
        student_tokenizer: the student's fast tokenizer (its chat template).
        teacher_tokenizer: the teacher's fast tokenizer, same vocabulary (its template).
        messages: {role, content} dicts.
        max_length: student length limit (a multiple of ``block_size``).
        teacher_max_length: teacher length limit (a multiple of ``block_size``).
        block_size: diffusion block size.
        eos_id: student EOS id (block fill).
        teacher_eos_id: teacher EOS id (block fill).
        supervision: ``last_turn`` or ``all_turns``.

    Returns:
        The example with ``teacher_input_ids`` and ``aligned_teacher_pos``, or None when
        no student answer token survives truncation.
    """
    from tide_lightning.method.alignment.positions import align_positions, cut_pairs

    al = align_positions(student_tokenizer, teacher_tokenizer, list(messages), supervision)
    ids, maskable = al.student_ids[:max_length], al.student_answer[:max_length]
    if not any(maskable):
        return None
    pairs, cut = cut_pairs(al.pairs, len(ids), teacher_max_length)
    t_ids = al.teacher_ids[:cut]
    t_ids, _ = fill_to_block(t_ids, [False] * len(t_ids), teacher_eos_id, block_size)
    ids, maskable = fill_to_block(ids, maskable, eos_id, block_size)
    pos = np.full(len(ids), -1, dtype=np.int64)
    pos[pairs[:, 0]] = pairs[:, 1]
    return Example(ids, maskable, t_ids, aligned_teacher_pos=pos.tolist())


def same_sequence_view(example: Example, teacher_max_length: int) -> Example:
    """The aligned view of an example the teacher reads as the student does (raw text).

    The teacher's sequence is the student's (both share the vocabulary and there is no
    template), cut at ``teacher_max_length``; each kept position is aligned to itself.
    """
    n = min(len(example.input_ids), teacher_max_length)
    pos = list(range(n)) + [-1] * (len(example.input_ids) - n)
    return Example(
        example.input_ids, example.maskable, example.input_ids[:n], aligned_teacher_pos=pos
    )


def text_tokens(tokenizer: Any, text: str, eos_id: int) -> list[int]:
    """Token ids of a raw document followed by one EOS (the document separator)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos_id]


def text_example(
    tokenizer: Any, text: str, max_length: int, block_size: int, eos_id: int
) -> Example:
    """One unpacked raw document: all tokens maskable, truncated, EOS-filled."""
    ids = text_tokens(tokenizer, text, eos_id)[:max_length]
    ids, maskable = fill_to_block(ids, [True] * len(ids), eos_id, block_size)
    return Example(ids, maskable)


def cross_example(
    alignment: Any,
    student_prompt: Sequence[bool] | None,
    teacher_prompt: Sequence[bool] | None,
    block_size: int,
    eos_id: int,
) -> Example | None:
    """Cross-pipeline fields from a chunk alignment (``tide_lightning.method.alignment``).

    Student EOS fill tokens belong to no chunk (chunk id -1) but are maskable for
    the CE term. Teacher tokens are maskable where they are not prompt. The teacher
    sequence ends with its last chunk (the published cut at the student's truncation
    point: past it lies text the student does not see, or template text no loss reads);
    the caller's alignment already cut it at the teacher length.

    Args:
        alignment: a :class:`~tide_lightning.method.alignment.ChunkAlignment` (``spans`` holds
            the half-open (s0, s1, t0, t1) token ranges).
        student_prompt: per student token, True for prompt/template; None = none.
        teacher_prompt: per teacher token, likewise.
        block_size: diffusion block size (student side).
        eos_id: student EOS id.

    Returns:
        The example, or None when no student token is maskable.
    """
    s_ids, t_ids = list(alignment.student_ids), list(alignment.teacher_ids)
    s_mask = [not p for p in student_prompt] if student_prompt is not None else [True] * len(s_ids)
    t_mask = [not p for p in teacher_prompt] if teacher_prompt is not None else [True] * len(t_ids)
    if not any(s_mask):
        return None
    spans = np.asarray(alignment.spans, dtype=np.int64).reshape(-1, 4)
    if len(spans):
        t_ids, t_mask = t_ids[: spans[-1, 3]], t_mask[: spans[-1, 3]]
    s_chunk = chunk_id_array(alignment.spans, len(s_ids), "student").tolist()
    t_chunk = chunk_id_array(alignment.spans, len(t_ids), "teacher").tolist()
    n = len(s_ids)
    s_ids, s_mask = fill_to_block(s_ids, s_mask, eos_id, block_size)
    s_chunk += [-1] * (len(s_ids) - n)
    return Example(s_ids, s_mask, t_ids, t_mask, s_chunk, t_chunk)


@dataclass
class ExampleBuilder:
    """Everything a worker needs to turn a :class:`Record` into tokens (picklable).

    Attributes:
        student_tokenizer: fast Hugging Face tokenizer of the student.
        max_length: student length L (a multiple of ``block_size``).
        block_size: diffusion block size.
        eos_id: student EOS id (block fill, document separator).
        pipeline: "shared" or "cross".
        teacher_tokenizer: teacher tokenizer (cross pipeline).
        teacher_max_length: teacher length Lt (cross pipeline).
        pack_text: shared pipeline: pack raw text into full rows of length L.
        supervision: chat records: ``last_turn`` (published) or ``all_turns``.
        teacher_view: shared pipeline: ``same_sequence`` (the teacher reads the student's
            tokens) or ``aligned`` (its own chat template, positions paired; needs
            ``teacher_tokenizer`` of the same vocabulary and ``teacher_max_length``).
        teacher_eos_id: teacher EOS id for the aligned view's block fill (None: the
            teacher tokenizer's).
    """

    student_tokenizer: Any
    max_length: int
    block_size: int
    eos_id: int
    pipeline: str = "shared"
    teacher_tokenizer: Any = None
    teacher_max_length: int = 0
    pack_text: bool = True
    supervision: str = "last_turn"
    teacher_view: str = "same_sequence"
    teacher_eos_id: int | None = None

    def __post_init__(self) -> None:
        if self.max_length % self.block_size:
            raise ValueError(
                f"max_length {self.max_length} must be a multiple of block_size {self.block_size}"
            )
        if self.pipeline not in ("shared", "cross"):
            raise ValueError(f"pipeline must be 'shared' or 'cross', got {self.pipeline!r}")
        if self.pipeline == "cross" and (
            self.teacher_tokenizer is None or self.teacher_max_length <= 0
        ):
            raise ValueError("the cross pipeline needs teacher_tokenizer and teacher_max_length")
        if self.supervision not in SUPERVISION:
            raise ValueError(f"supervision must be one of {SUPERVISION}, got {self.supervision!r}")
        if self.teacher_view not in TEACHER_VIEWS:
            raise ValueError(
                f"teacher_view must be one of {TEACHER_VIEWS}, got {self.teacher_view!r}"
            )
        if self.aligned:
            if self.teacher_tokenizer is None or self.teacher_max_length <= 0:
                raise ValueError("the aligned teacher view needs teacher_tokenizer and length")
            if self.teacher_max_length % self.block_size:
                raise ValueError(
                    f"teacher_max_length {self.teacher_max_length} must be a multiple of "
                    f"block_size {self.block_size}"
                )
            if self.teacher_eos_id is None:
                self.teacher_eos_id = self.teacher_tokenizer.eos_token_id
            if self.teacher_eos_id is None:
                raise ValueError("the teacher tokenizer has no EOS token; pass teacher_eos_id")

    @property
    def aligned(self) -> bool:
        """Whether the shared pipeline's teacher reads its own rendering (aligned view)."""
        return self.pipeline == "shared" and self.teacher_view == "aligned"

    def packable(self, record: Any) -> bool:
        """Whether the record goes into the packing buffer (raw text, shared pipeline)."""
        return self.pack_text and self.pipeline == "shared" and record.text is not None

    def tokens(self, record: Any) -> list[int]:
        """Token ids of a packable record, EOS-terminated."""
        return text_tokens(self.student_tokenizer, record.text, self.eos_id)

    def example(self, record: Any) -> Example | None:
        """One unpacked example (chat, unpacked text, or any cross record)."""
        if self.pipeline == "cross":
            return self._cross_example(record)
        if record.text is not None:
            ex = text_example(
                self.student_tokenizer, record.text, self.max_length, self.block_size, self.eos_id
            )
            return same_sequence_view(ex, self.teacher_max_length) if self.aligned else ex
        if self.aligned:
            return aligned_chat_example(
                self.student_tokenizer, self.teacher_tokenizer, record.messages,
                self.max_length, self.teacher_max_length, self.block_size, self.eos_id,
                self.teacher_eos_id, self.supervision,
            )  # fmt: skip
        return chat_example(
            self.student_tokenizer,
            record.messages,
            self.max_length,
            self.block_size,
            self.eos_id,
            self.supervision,
        )

    def _cross_example(self, record: Any) -> Example | None:
        from tide_lightning.method import alignment

        kwargs = {"max_student_len": self.max_length, "max_teacher_len": self.teacher_max_length}
        s_tok, t_tok = self.student_tokenizer, self.teacher_tokenizer
        if record.text is not None:
            al = alignment.align_texts(s_tok, t_tok, record.text, **kwargs)
            return cross_example(al, None, None, self.block_size, self.eos_id)
        al = alignment.align_messages(
            s_tok, t_tok, list(record.messages), supervision=self.supervision, **kwargs
        )
        return cross_example(al, al.student_prompt, al.teacher_prompt, self.block_size, self.eos_id)
