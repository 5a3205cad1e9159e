"""Per-token chunk ids: the batch representation of chunks."""

from __future__ import annotations

import pytest
import torch

from tide_lightning.method.alignment import (
    align_texts,
    chunk_id_array,
    chunk_id_tensor,
    pad_chunk_ids,
)

CHUNKS = [(1, 3, 0, 1), (3, 4, 1, 4)]


def test_chunk_ids_by_hand():
    assert chunk_id_tensor(CHUNKS, 5, "student").tolist() == [-1, 0, 0, 1, -1]
    assert chunk_id_tensor(CHUNKS, 5, "teacher").tolist() == [0, 1, 1, 1, -1]
    assert chunk_id_tensor([], 3, "student").tolist() == [-1, -1, -1]
    assert chunk_id_array(CHUNKS, 2, "student").tolist() == [-1, 0]  # clipped
    with pytest.raises(ValueError):
        chunk_id_tensor(CHUNKS, 5, "both")


def test_pad_chunk_ids():
    rows = [chunk_id_tensor(CHUNKS, 5, "student"), chunk_id_tensor(CHUNKS, 2, "teacher")]
    batch = pad_chunk_ids(rows)
    assert batch.dtype == torch.long
    assert batch.tolist() == [[-1, 0, 0, 1, -1], [0, 1, -1, -1, -1]]
    assert pad_chunk_ids(rows, length=3).shape == (2, 3)


def test_chunk_ids_from_real_alignment(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "x = 12345\n    y\n")
    s = chunk_id_tensor(al.chunks, len(al.student_ids), "student")
    t = chunk_id_tensor(al.chunks, len(al.teacher_ids), "teacher")
    # Same chunk count on both sides, ids in order, every chunk present on both sides.
    assert s.max() == t.max() == al.num_chunks - 1
    assert torch.equal(s[s >= 0].unique(), t[t >= 0].unique())
    assert bool((s[s >= 0].diff() >= 0).all()) and bool((t[t >= 0].diff() >= 0).all())
    assert int((s < 0).sum()) == al.student_left_out
    assert int((t < 0).sum()) == al.teacher_left_out
