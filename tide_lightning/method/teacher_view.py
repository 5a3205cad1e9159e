"""The shared pipeline's aligned teacher view: student masks carried to teacher positions.

In the published ``*_aligned`` modes (docs/method.md §14) the teacher reads the
conversation rendered with its own chat template, so a student answer token at
position ``i`` sits at teacher position ``pos[i]`` (``aligned_teacher_pos``, -1 when
it has no counterpart). The token losses run only at masked student positions that
have one (``distilled = masked & (pos >= 0)``; ``|M|`` counts those); the teacher
masks exactly the images of those positions, and CompDemo's halves are drawn on the
student side and carried over the same way. Pure torch, no config.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tide_lightning.method.masking import (
    apply_mask,
    complementary_inputs,
    complementary_split,
    merge_complementary,
)


def to_teacher(flags: Tensor, pos: Tensor, teacher_len: int) -> Tensor:
    """Carry student flags to the aligned teacher positions.

    Args:
        flags: Bool[B, L] student positions.
        pos: Long[B, L] teacher position of each student token, -1 for none.
        teacher_len: Lt.

    Returns:
        Bool[B, Lt], True at ``pos[b, i]`` for every flagged, aligned ``(b, i)``.
    """
    sel = flags & (pos >= 0)
    out = torch.zeros((flags.shape[0], teacher_len), dtype=torch.bool, device=flags.device)
    rows = torch.arange(flags.shape[0], device=flags.device)[:, None].expand_as(pos)
    out[rows[sel], pos[sel]] = True
    return out


def aligned_teacher_logits(
    teacher,
    batch: dict[str, Tensor],
    distilled: Tensor,
    compdemo: bool,
    compdemo_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Teacher logits for the distilled student positions, through the alignment.

    Args:
        teacher: ``logits(input_ids, logits_at, attention_mask=, clean_ids=)`` and
            ``mask_token_id`` (the :class:`~tide_lightning.method.interfaces.Teacher`).
        batch: ``teacher_input_ids`` Long[B, Lt], ``teacher_attention_mask`` Bool[B, Lt]
            (optional), ``aligned_teacher_pos`` Long[B, L].
        distilled: Bool[B, L] masked student positions that have a teacher position.
        compdemo: run CompDemo's two passes (one batched call of 2B rows).
        compdemo_ratio: share of ``distilled`` in the first half.
        generator: RNG of the CompDemo split.

    Returns:
        Float[N, V] teacher logits, row k for the k-th True of ``distilled`` in
        row-major order (the order of the student's logits at those positions).
    """
    tx0, pos = batch["teacher_input_ids"], batch["aligned_teacher_pos"]
    attention = batch.get("teacher_attention_mask")
    lt = tx0.shape[1]
    if compdemo:
        half_a, half_b = complementary_split(distilled, compdemo_ratio, generator)
        t_a, t_b = to_teacher(half_a, pos, lt), to_teacher(half_b, pos, lt)
        ids, wanted = complementary_inputs(tx0, t_a, t_b, teacher.mask_token_id)
        pair = None if attention is None else torch.cat([attention, attention])
        both = teacher.logits(ids, wanted, attention_mask=pair, clean_ids=torch.cat([tx0, tx0]))
        merged, t_sel = merge_complementary(both, t_a, t_b), t_a | t_b
    else:
        t_sel = to_teacher(distilled, pos, lt)
        ids = apply_mask(tx0, t_sel, teacher.mask_token_id)
        merged = teacher.logits(ids, t_sel, attention_mask=attention, clean_ids=tx0)
    # ``merged`` follows the teacher's row-major order; index it in the student's.
    rank = (torch.cumsum(t_sel.flatten().long(), 0) - 1).view_as(t_sel)
    rows = torch.arange(pos.shape[0], device=pos.device)[:, None].expand_as(pos)
    return merged[rank[rows[distilled], pos[distilled]]]
