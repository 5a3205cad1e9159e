import torch

from tide_lightning import (
    chunk_consistent_mask,
    complementary_chunk_split,
    complementary_inputs,
    complementary_split,
    merge_complementary,
    sample_mask,
    sample_time,
)
from tide_lightning.method.masking import apply_mask, expand_block_time


def test_sample_time_range_and_shapes():
    g = torch.Generator().manual_seed(0)
    t = sample_time(10_000, eps=1e-3, generator=g)
    assert t.shape == (10_000,)
    assert t.min() >= 1e-3 and t.max() < 1.0
    assert abs(t.mean().item() - 0.5005) < 0.01
    per_block = sample_time(3, per_block=4, generator=g)
    assert per_block.shape == (3, 4)
    expanded = expand_block_time(per_block, seq_len=8, block_size=2)
    assert torch.equal(expanded[:, ::2], per_block) and torch.equal(expanded[:, 1::2], per_block)


def test_sample_mask_rate_and_never_touches_unmaskable():
    g = torch.Generator().manual_seed(0)
    b, length = 2000, 64
    x0 = torch.zeros(b, length, dtype=torch.long)
    maskable = torch.zeros(b, length, dtype=torch.bool)
    maskable[:, 16:] = True  # prompt of 16 tokens
    t = torch.full((b,), 0.3)
    masked = sample_mask(x0, maskable, t, generator=g)
    assert not masked[:, :16].any()
    rate = masked[:, 16:].float().mean().item()
    # 96,000 Bernoulli(0.3) draws: std 0.0015
    assert abs(rate - 0.3) < 0.006
    t = torch.linspace(0.05, 0.95, b)
    rates = sample_mask(x0, maskable, t, generator=g)[:, 16:].float().mean(1)
    # per-sequence rates: 10 bins of 200 rows, each bin's rate within 0.01 of its mean t
    binned_rates = rates.reshape(10, -1).mean(1)
    assert (binned_rates - t.reshape(10, -1).mean(1)).abs().max() < 0.01


def test_apply_mask():
    x0 = torch.tensor([[5, 6, 7]])
    assert torch.equal(
        apply_mask(x0, torch.tensor([[True, False, True]]), 99), torch.tensor([[99, 6, 99]])
    )


def test_complementary_halves_partition_the_mask():
    g = torch.Generator().manual_seed(0)
    masked = torch.rand(64, 128, generator=g) < 0.4
    a, b = complementary_split(masked, generator=g)
    assert not (a & b).any()
    assert torch.equal(a | b, masked)
    share = a.sum().item() / masked.sum().item()
    assert abs(share - 0.5) < 0.02


def test_complementary_inputs_and_merge():
    x0 = torch.arange(1, 7).reshape(1, 6)
    a = torch.tensor([[True, False, False, True, False, False]])
    b = torch.tensor([[False, True, False, False, False, True]])
    ids, wanted = complementary_inputs(x0, a, b, mask_id=0)
    # pass 1 masks M_B, pass 2 masks M_A
    assert ids.tolist() == [[1, 0, 3, 4, 5, 0], [0, 2, 3, 0, 5, 6]]
    assert wanted.tolist() == [b[0].tolist(), a[0].tolist()]
    # fake teacher: the logit row names the position it came from and the pass
    positions = torch.arange(6).expand(2, 6)
    rows = positions[wanted].float() + torch.tensor([0, 0, 100, 100]).float()
    merged = merge_complementary(rows[:, None], a, b)
    # M = positions 0, 1, 3, 5: A positions (0, 3) from pass 2, B (1, 5) from pass 1
    assert merged[:, 0].tolist() == [100.0, 1.0, 103.0, 5.0]


def test_chunk_consistent_mask_hand_example():
    # student: [p p | c0 c0 | c1 | eos]; teacher: [bos | c0 | c1 c1]
    s_ids = torch.tensor([[-1, -1, 0, 0, 1, -1]])
    t_ids = torch.tensor([[-1, 0, 1, 1]])
    maskable = torch.tensor([[False, False, True, True, True, True]])
    drawn = torch.tensor([[False, False, False, True, False, True]])
    s_mask, t_mask, chunk_masked, active = chunk_consistent_mask(drawn, maskable, s_ids, t_ids)
    assert s_mask.tolist() == [[False, False, True, True, False, True]]
    assert t_mask.tolist() == [[False, True, False, False]]
    assert chunk_masked.tolist() == [[True, False]]
    assert active.tolist() == [[True, False]]


def test_chunk_with_prompt_token_is_not_active():
    s_ids = torch.tensor([[0, 0, 1]])
    t_ids = torch.tensor([[0, 1]])
    maskable = torch.tensor([[False, True, True]])
    drawn = torch.tensor([[False, True, True]])
    s_mask, _, chunk_masked, active = chunk_consistent_mask(drawn, maskable, s_ids, t_ids)
    assert not s_mask[0, 0]  # prompt token stays visible
    assert chunk_masked.tolist() == [[True, True]]
    assert active.tolist() == [[False, True]]


def test_chunk_split_keeps_chunks_whole_on_both_sides():
    g = torch.Generator().manual_seed(0)
    s_ids = torch.tensor([[0, 0, 1, 2, 2, 2, 3, -1]] * 50)
    t_ids = torch.tensor([[0, 1, 1, 2, 3, 3, -1, -1]] * 50)
    chunk_masked = torch.rand(50, 4, generator=g) < 0.7
    sa, sb, ta, tb = complementary_chunk_split(chunk_masked, s_ids, t_ids, generator=g)
    assert not (sa & sb).any() and not (ta & tb).any()
    for side_a, ids in ((sa, s_ids), (ta, t_ids)):
        for c in range(4):
            members = side_a[ids == c].reshape(50, -1)
            assert (members.all(1) | ~members.any(1)).all()  # all or none of a chunk
    # the teacher halves partition the chunk-consistent teacher mask
    _, t_mask, _, _ = chunk_consistent_mask(
        torch.gather(chunk_masked, 1, s_ids.clamp(min=0)) & (s_ids >= 0),
        torch.ones_like(s_ids, dtype=torch.bool),
        s_ids,
        t_ids,
    )
    assert torch.equal(ta | tb, t_mask)
