"""Pad a list of :class:`Example` into the batch dict shared by the whole project."""

from __future__ import annotations

import torch
from torch import Tensor

from tide_lightning.data.examples import Example, same_sequence_view


def _pad(rows: list[list], width: int, value, dtype: torch.dtype) -> Tensor:
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def collate(
    examples: list[Example],
    pad_id: int,
    teacher_pad_id: int | None = None,
    pad_to: int | None = None,
    teacher_pad_to: int | None = None,
) -> dict[str, Tensor]:
    """Pad examples into a batch (right padding; padding is never maskable).

    Aligned shared batches (some example has ``aligned_teacher_pos``): an example without
    a teacher view (a packed raw-text row) shows the teacher its own tokens, each
    position aligned to itself (:func:`~tide_lightning.data.examples.same_sequence_view`).
    A batch of packed rows only carries no teacher fields: the objective then distils
    every masked position against the same sequence, which is what that view means.

    Args:
        examples: B examples; cross fields present on all or none.
        pad_id: student padding id.
        teacher_pad_id: teacher padding id (cross pipeline).
        pad_to: fixed student width L (default: the longest example).
        teacher_pad_to: fixed teacher width Lt (default: the longest example).

    Returns:
        ``input_ids`` Long[B, L], ``maskable`` Bool[B, L], ``attention_mask`` Bool[B, L];
        with cross fields also ``teacher_input_ids`` Long[B, Lt],
        ``teacher_attention_mask`` / ``teacher_maskable`` Bool[B, Lt],
        ``student_chunk_ids`` Long[B, L] and ``teacher_chunk_ids`` Long[B, Lt] (-1 pad);
        aligned shared batches: ``teacher_input_ids``, ``teacher_attention_mask`` and
        ``aligned_teacher_pos`` Long[B, L] (the teacher position of each student token,
        -1 for none and for padding).
    """
    if any(e.aligned_teacher_pos is not None for e in examples):
        limit = teacher_pad_to or max(len(e.input_ids) for e in examples)
        examples = [
            e if e.aligned_teacher_pos is not None else same_sequence_view(e, limit)
            for e in examples
        ]
    width = pad_to or max(len(e.input_ids) for e in examples)
    batch = {
        "input_ids": _pad([e.input_ids for e in examples], width, pad_id, torch.long),
        "maskable": _pad([e.maskable for e in examples], width, False, torch.bool),
        "attention_mask": _pad(
            [[True] * len(e.input_ids) for e in examples], width, False, torch.bool
        ),
    }
    if examples[0].teacher_input_ids is None:
        return batch
    if teacher_pad_id is None:
        raise ValueError("cross batches need teacher_pad_id")
    t_rows = [e.teacher_input_ids for e in examples]
    t_width = teacher_pad_to or max(len(r) for r in t_rows)
    batch["teacher_input_ids"] = _pad(t_rows, t_width, teacher_pad_id, torch.long)
    batch["teacher_attention_mask"] = _pad(
        [[True] * len(r) for r in t_rows], t_width, False, torch.bool
    )
    if examples[0].aligned_teacher_pos is not None:
        batch["aligned_teacher_pos"] = _pad(
            [e.aligned_teacher_pos for e in examples], width, -1, torch.long
        )
        return batch
    batch["teacher_maskable"] = _pad(
        [e.teacher_maskable for e in examples], t_width, False, torch.bool
    )
    batch["student_chunk_ids"] = _pad(
        [e.student_chunk_ids for e in examples], width, -1, torch.long
    )
    batch["teacher_chunk_ids"] = _pad(
        [e.teacher_chunk_ids for e in examples], t_width, -1, torch.long
    )
    return batch
