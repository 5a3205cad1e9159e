"""Turn one document into the token fields of one training example.

Pure functions of (tokenizer, document, lengths); no torch, no state. The stream
calls them inside dataloader workers. Conventions (SPEC section 3): prompt tokens
are never maskable; a sequence is filled with EOS up to a multiple of the block
size and the filling EOS are maskable (supervised); padding comes later, in the
collate step, and therefore starts on a block boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tide_lightning.method.alignment.tensors import chunk_id_array


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
    """

    input_ids: list[int]
    maskable: list[bool]
    teacher_input_ids: list[int] | None = None
    teacher_maskable: list[bool] | None = None
    student_chunk_ids: list[int] | None = None
    teacher_chunk_ids: list[int] | None = None

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
    tokenizer: Any, messages: Sequence[dict[str, str]]
) -> tuple[list[int], list[bool]]:
    """Tokenize a chat with the tokenizer's template (thinking disabled) and label answers.

    Uses the same content location as the cross pipeline
    (``tide_lightning.method.alignment.chat.content_regions``): a token is an answer token when
    it starts inside an assistant content or in the end-of-turn text after it, up to
    and including the EOS text, so the model learns to stop; all else is prompt.

    Returns:
        (ids, is_answer), one flag per token.
    """
    from tide_lightning.method.alignment.chat import content_regions

    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat records need a tokenizer with a chat template")
    text, regions = content_regions(tokenizer, list(messages))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [
        (start, tail)
        for (start, _, tail), m in zip(regions, messages, strict=True)
        if m["role"] == "assistant" and start >= 0
    ]
    answer = [any(s0 <= s < s1 for s0, s1 in spans) for s, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), answer


def chat_example(
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    max_length: int,
    block_size: int,
    eos_id: int,
) -> Example | None:
    """Tokenize a chat: prompt tokens unmaskable, answers maskable, EOS fill, truncation.

    Args:
        tokenizer: a fast Hugging Face tokenizer with a chat template.
        messages: {role, content} dicts.
        max_length: student length limit (a multiple of ``block_size``).
        block_size: diffusion block size.
        eos_id: EOS id used for the block fill.

    Returns:
        The example, or None when no answer token survives truncation.
    """
    ids, maskable = response_token_mask(tokenizer, messages)
    ids, maskable = ids[:max_length], maskable[:max_length]
    if not any(maskable):
        return None
    ids, maskable = fill_to_block(ids, maskable, eos_id, block_size)
    return Example(ids, maskable)


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
    the CE term. Teacher tokens are maskable where they are not prompt.

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
    """

    student_tokenizer: Any
    max_length: int
    block_size: int
    eos_id: int
    pipeline: str = "shared"
    teacher_tokenizer: Any = None
    teacher_max_length: int = 0
    pack_text: bool = True

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

    def packable(self, record: Any) -> bool:
        """Whether the record goes into the packing buffer (raw text, shared pipeline)."""
        return self.pack_text and self.pipeline == "shared" and record.text is not None

    def tokens(self, record: Any) -> list[int]:
        """Token ids of a packable record, EOS-terminated."""
        return text_tokens(self.student_tokenizer, record.text, self.eos_id)

    def example(self, record: Any) -> Example | None:
        """One unpacked example (chat, unpacked text, or any cross record)."""
        if self.pipeline == "shared":
            if record.text is not None:
                return text_example(
                    self.student_tokenizer,
                    record.text,
                    self.max_length,
                    self.block_size,
                    self.eos_id,
                )
            return chat_example(
                self.student_tokenizer,
                record.messages,
                self.max_length,
                self.block_size,
                self.eos_id,
            )
        return self._cross_example(record)

    def _cross_example(self, record: Any) -> Example | None:
        from tide_lightning.method import alignment

        kwargs = {"max_student_len": self.max_length, "max_teacher_len": self.teacher_max_length}
        s_tok, t_tok = self.student_tokenizer, self.teacher_tokenizer
        if record.text is not None:
            al = alignment.align_texts(s_tok, t_tok, record.text, **kwargs)
            return cross_example(al, None, None, self.block_size, self.eos_id)
        al = alignment.align_messages(s_tok, t_tok, list(record.messages), **kwargs)
        return cross_example(al, al.student_prompt, al.teacher_prompt, self.block_size, self.eos_id)
