import itertools

import pytest

from tide_lightning import bd3lm_attention_mask


def allowed_by_spec(q: int, k: int, seq_len: int, block: int, clean_first: bool) -> bool:
    """docs/method.md §3.2, written out independently of the implementation."""
    q_noisy = (q < seq_len) != clean_first
    k_noisy = (k < seq_len) != clean_first
    bq, bk = (q % seq_len) // block, (k % seq_len) // block
    if bq == bk and q_noisy == k_noisy:
        return True
    if q_noisy and not k_noisy and bq > bk:
        return True
    return (not q_noisy) and (not k_noisy) and bq >= bk


@pytest.mark.parametrize("seq_len,block", [(4, 2), (6, 2), (6, 3), (5, 2), (4, 4), (8, 1)])
@pytest.mark.parametrize("clean_first", [False, True])
def test_mask_cell_by_cell(seq_len, block, clean_first):
    mask = bd3lm_attention_mask(seq_len, block, clean_first=clean_first)
    assert mask.shape == (2 * seq_len, 2 * seq_len)
    for q, k in itertools.product(range(2 * seq_len), repeat=2):
        assert bool(mask[q, k]) == allowed_by_spec(q, k, seq_len, block, clean_first), (q, k)


def test_clean_never_attends_noisy():
    mask = bd3lm_attention_mask(8, 2)
    assert not mask[8:, :8].any()
    mask = bd3lm_attention_mask(8, 2, clean_first=True)
    assert not mask[:8, 8:].any()


def test_clean_first_is_the_mirror():
    a = bd3lm_attention_mask(6, 2)
    b = bd3lm_attention_mask(6, 2, clean_first=True)
    perm = list(range(6, 12)) + list(range(6))
    assert (a[perm][:, perm] == b).all()


def test_rejects_nonpositive_sizes():
    with pytest.raises(ValueError):
        bd3lm_attention_mask(0, 2)
