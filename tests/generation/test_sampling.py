"""Block-diffusion sampler: hand-worked helpers and properties of whole decoding runs."""

from __future__ import annotations

import pytest
import torch

from tide_lightning.generation.sampling import (
    PREFIX_MODES,
    generate,
    left_pad,
    propose,
    select_commits,
    transfer_schedule,
    trim_at_eos,
)
from tide_lightning.models import build_student

VOCAB, MASK, PAD, EOS = 64, 62, 60, 61
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]


@pytest.fixture(scope="module")
def student():
    return build_student(
        vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        mask_token_id=MASK, seed=0,
    ).eval()  # fmt: skip


class Spy:
    """Wraps a student: records every block it denoises and can add to logits."""

    def __init__(self, student, bonus=None):
        self.student, self.bonus, self.blocks = student, bonus, []
        self.mask_token_id = student.mask_token_id

    def parameters(self):
        return self.student.parameters()

    def extend_and_forward_block(self, cache, clean, clean_pos, block, positions, bk, pad, at):
        logits = self.student.extend_and_forward_block(
            cache, clean, clean_pos, block, positions, bk, pad
        )
        return self._seen(block, positions, logits, at)

    def forward_block(self, cache, block, positions, logits_at=None):
        return self._seen(
            block, positions, self.student.forward_block(cache, block, positions), logits_at
        )

    def _seen(self, block, positions, logits, logits_at):
        self.blocks.append((block.clone(), positions.clone()))
        if self.bonus is not None:
            logits = self.bonus(logits, positions)
        return logits if logits_at is None else logits[logits_at]


def reference_generate(
    student, prompt, max_new_tokens, block_size, steps_per_block=None, threshold=None
):
    """Cache-free greedy decoding of one unpadded prompt: every step is a ``forward_train``
    over ``[xt ; x0]`` with the committed tokens clean and the current block noisy."""
    mask_id = student.mask_token_id
    prompt = torch.tensor([prompt])
    tokens = torch.empty(1, 0, dtype=torch.long)
    for _ in range(0, max_new_tokens, block_size):
        block = torch.full((1, block_size), mask_id)
        counts = transfer_schedule(block_size, steps_per_block or block_size)
        step = 0
        while (block == mask_id).any():
            x0 = torch.cat([prompt, tokens, block], dim=1)
            at = torch.zeros_like(x0, dtype=torch.bool)
            at[:, -block_size:] = True
            logits = student.forward_train(x0, x0, at, block_size).view(1, block_size, -1)
            logits[..., mask_id] = -torch.inf
            candidates, confidence = propose(logits, 0.0, "low_confidence")
            masked = block == mask_id
            if threshold is None:
                commit = select_commits(confidence, masked, k=counts[step])
            else:
                commit = select_commits(confidence, masked, threshold=threshold)
            block = torch.where(commit, candidates, block)
            step += 1
        tokens = torch.cat([tokens, block], dim=1)
    return tokens[0]


def test_transfer_schedule_hand_values():
    assert transfer_schedule(5, 3) == [2, 2, 1]
    assert transfer_schedule(32, 32) == [1] * 32
    assert transfer_schedule(32, 8) == [4] * 8
    assert transfer_schedule(3, 8) == [1, 1, 1]  # steps with nothing to commit are dropped
    with pytest.raises(ValueError):
        transfer_schedule(4, 0)


def test_left_pad_hand_values():
    ids, valid = left_pad([[1, 2, 3], [4], []], block_size=2, pad_id=9)
    assert ids.tolist() == [[9, 1, 2, 3], [9, 9, 9, 4], [9, 9, 9, 9]]
    assert valid.tolist() == [[False, True, True, True], [False] * 3 + [True], [False] * 4]


def test_select_commits_top_k_and_threshold_hand_values():
    confidence = torch.tensor([[0.9, 0.2, 0.6, 0.4], [0.1, 0.3, 0.2, 0.05]])
    masked = torch.tensor([[False, True, True, True], [True, True, True, True]])
    top2 = select_commits(confidence, masked, k=2)
    assert top2.tolist() == [[False, False, True, True], [False, True, True, False]]
    # k larger than the masked count commits every masked position, never a committed one.
    assert select_commits(confidence, masked, k=4).tolist() == masked.tolist()
    tau = select_commits(confidence, masked, threshold=0.5)
    # Row 1 has nothing above 0.5: its most confident masked token still commits.
    assert tau.tolist() == [[False, False, True, False], [False, True, False, False]]
    with pytest.raises(ValueError):
        select_commits(confidence, masked)


def test_propose_greedy_confidence_is_softmax_probability():
    logits = torch.tensor([[[1.0, 3.0, 0.0], [2.0, 2.0 + 1e-3, -1.0]]])
    tokens, confidence = propose(logits, 0.0, "low_confidence")
    assert tokens.tolist() == [[1, 1]]
    torch.testing.assert_close(confidence, logits.softmax(-1).amax(-1))
    # Random scores are uniform draws, reproducible from the generator.
    _, a = propose(logits, 0.0, "random", torch.Generator().manual_seed(0))
    _, b = propose(logits, 0.0, "random", torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and ((a >= 0) & (a < 1)).all()
    with pytest.raises(ValueError):
        propose(logits, 0.0, "entropy")


def test_gumbel_sampling_follows_the_tempered_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))[None, None].expand(1, 20000, 3)
    gen = torch.Generator().manual_seed(0)
    tokens, _ = propose(logits, 1.0, "low_confidence", gen)
    freq = torch.bincount(tokens.flatten(), minlength=3).float() / tokens.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)
    cold, _ = propose(logits, 0.05, "low_confidence", gen)  # temperature -> 0 is greedy
    assert (cold == 0).all()


def test_never_remasks_and_order_is_a_permutation(student):
    spy = Spy(student)
    out = generate(spy, PROMPTS, max_new_tokens=12, block_size=4, pad_id=PAD)
    # Within a block, a committed position keeps its token at every later step.
    for (before, pos_b), (after, pos_a) in zip(spy.blocks, spy.blocks[1:], strict=False):
        if torch.equal(pos_b, pos_a):
            kept = before != MASK
            assert torch.equal(after[kept], before[kept])
            assert int((after != MASK).sum() - kept.sum()) == len(PROMPTS)  # one per row
    assert not (out.tokens == MASK).any()
    for row in out.order.tolist():  # one token per step: every step index exactly once
        assert sorted(row) == list(range(12))
    assert out.steps.tolist() == [12] * 3 and out.tokens_per_step() == 1.0
    # One forward per denoising step and no other: committing a block shares the forward
    # of the next block's first step (the Spy has no method for a separate commit).
    assert len(spy.blocks) == 12


def test_order_is_block_by_block_with_fewer_steps(student):
    out = generate(student, PROMPTS, max_new_tokens=8, block_size=4, steps_per_block=2, pad_id=PAD)
    assert out.steps.tolist() == [4] * 3 and out.tokens_per_step() == 2.0
    for row in out.order.tolist():
        assert sorted(row[:4]) == [0, 0, 1, 1] and sorted(row[4:]) == [2, 2, 3, 3]


@pytest.mark.parametrize(("steps_per_block", "threshold"), [(None, None), (2, None), (None, 0.05)])
def test_cached_decoding_equals_a_cache_free_reference(student, steps_per_block, threshold):
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]]  # multiples of Bk: no padding
    kw = dict(max_new_tokens=12, block_size=4, steps_per_block=steps_per_block, threshold=threshold)
    for prompt in prompts:
        with torch.no_grad():
            want = reference_generate(student, prompt, **kw)
        for prefix in PREFIX_MODES:
            got = generate(student, [prompt], pad_id=PAD, prefix=prefix, **kw)
            assert torch.equal(got.tokens[0], want)


def test_left_padded_batch_decodes_each_prompt_as_alone(student):
    batch = generate(student, PROMPTS, max_new_tokens=10, block_size=4, pad_id=PAD)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(student, [prompt], max_new_tokens=10, block_size=4, pad_id=PAD)
        assert torch.equal(alone.tokens[0], batch.tokens[row])
        assert torch.equal(alone.order[0], batch.order[row])


@pytest.mark.parametrize("prefix", ["per_block", "per_step"])
@pytest.mark.parametrize("threshold", [None, 0.02])
def test_cached_prefix_equals_recomputed_prefix(student, threshold, prefix):
    kw = dict(max_new_tokens=12, block_size=4, pad_id=PAD, eos_id=EOS, threshold=threshold)
    cached = generate(student, PROMPTS, **kw)
    recomputed = generate(student, PROMPTS, prefix=prefix, **kw)
    assert torch.equal(cached.tokens, recomputed.tokens)
    assert torch.equal(cached.order, recomputed.order)
    assert torch.equal(cached.steps, recomputed.steps)


def test_prefix_modes_run_the_forwards_they_claim(student, monkeypatch):
    """Per block: one prefix re-encoding per block; per step: one per denoising step."""
    calls = {"extend": 0, "block": 0}
    extend, block = student.extend_and_forward_block, student.forward_block

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(student, "extend_and_forward_block", count("extend", extend))
    monkeypatch.setattr(student, "forward_block", count("block", block))
    kw = dict(max_new_tokens=12, block_size=4, pad_id=PAD)  # 3 blocks x 4 steps
    want = {"cached": (3, 9), "per_block": (3, 9), "per_step": (12, 0)}
    for prefix, (extends, blocks) in want.items():
        calls.update(extend=0, block=0)
        generate(student, [[5, 6, 7]], prefix=prefix, **kw)
        assert (calls["extend"], calls["block"]) == (extends, blocks), prefix


def test_unknown_prefix_mode_is_refused(student):
    with pytest.raises(ValueError, match="prefix must be one of"):
        generate(student, PROMPTS, max_new_tokens=4, block_size=4, prefix="sometimes")


@pytest.mark.parametrize("threshold", [0.0, 0.02, 1.0])
def test_threshold_commits_at_least_one_per_step(student, threshold):
    out = generate(
        student, PROMPTS, max_new_tokens=8, block_size=4, pad_id=PAD, threshold=threshold
    )
    for row, steps in zip(out.order.tolist(), out.steps.tolist(), strict=True):
        assert set(row) == set(range(steps))  # every step committed something
    if threshold == 0.0:
        assert out.steps.tolist() == [2] * 3  # everything at once: one step per block
    if threshold == 1.0:
        assert out.steps.tolist() == [8] * 3


def test_eos_stops_a_row_after_its_block(student):
    def force_eos(logits, positions):
        logits = logits.clone()
        rows = positions[:, 0] == len(PROMPTS[0]) + 4  # row 0's second block, first token
        logits[rows, 0, EOS] += 100.0
        return logits

    spy = Spy(student, force_eos)
    out = generate(spy, PROMPTS[:2], max_new_tokens=16, block_size=4, pad_id=PAD, eos_id=EOS)
    assert out.tokens[0, 4].item() == EOS
    assert (out.tokens[0, 8:] == EOS).all() and (out.order[0, 8:] == -1).all()
    assert (out.order[1] >= 0).all() and out.steps.tolist() == [8, 16]
    assert [b.shape[0] for b, _ in spy.blocks[8:]] == [1] * 8  # the finished row left the batch
    assert trim_at_eos(out.tokens, EOS)[0] == out.tokens[0, :4].tolist()


def test_partial_last_block_random_remasking_and_seeded_sampling(student):
    kw = dict(max_new_tokens=6, block_size=4, pad_id=PAD, temperature=1.0, remasking="random")
    a = generate(student, PROMPTS, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(student, PROMPTS, generator=torch.Generator().manual_seed(3), **kw)
    assert a.tokens.shape == (3, 6) and torch.equal(a.tokens, b.tokens)
    assert sorted(a.order[0].tolist()) == list(range(6))


def test_trim_at_eos():
    tokens = torch.tensor([[1, 2, 9, 3], [4, 5, 6, 7]])
    assert trim_at_eos(tokens, 9) == [[1, 2], [4, 5, 6, 7]]
    assert trim_at_eos(tokens, None) == tokens.tolist()
