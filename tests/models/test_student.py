"""BD3LM student: the docs/method.md §3.2 facts, cached decoding, selection, loading."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from tide_lightning.models import BD3LMStudent, build_student, load_student
from tide_lightning.models.masks import (
    appended_block_mask,
    bd3lm_batch_mask,
    bd3lm_mask_mod,
    position_ids_from_mask,
    prefix_block_mask,
    to_additive,
)

VOCAB = 64
MASK = 62
PAD = 60


def tiny_student(**kw) -> BD3LMStudent:
    args = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2)
    args.update(kw)
    return build_student(mask_token_id=MASK, seed=0, **args).eval()


def tiny_tokenizer(with_mask: bool = True, words: int = 60) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: ``w0..w{words-1}``, ``<pad>``, ``<unk>``, then ``<|mask|>``."""
    vocab = {f"w{i}": i for i in range(words)}
    vocab["<pad>"], vocab["<unk>"] = words, words + 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    if with_mask:
        tok.add_special_tokens({"additional_special_tokens": ["<|mask|>"]})
    return tok


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 60, (batch, length), generator=torch.Generator().manual_seed(seed))


def all_positions(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x, dtype=torch.bool)


@torch.no_grad()
def test_clean_input_with_one_block_equals_bidirectional_forward():
    student = tiny_student()
    x0 = ids(2, 8)
    got = student.forward_train(x0, x0, all_positions(x0), block_size=8).view(2, 8, VOCAB)
    reference = copy.deepcopy(student.model)
    reference.config.is_causal = False  # transformers' own bidirectional path
    want = reference(input_ids=x0).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_selected_rows_equal_rows_of_full_logits():
    student = tiny_student()
    x0 = ids(3, 12)
    xt = torch.where(torch.rand(3, 12, generator=torch.Generator().manual_seed(1)) < 0.5, MASK, x0)
    full = student.forward_train(xt, x0, all_positions(xt), block_size=4).view(3, 12, VOCAB)
    selected = xt == MASK
    got = student.forward_train(xt, x0, selected, block_size=4)
    assert got.shape == (int(selected.sum()), VOCAB)
    torch.testing.assert_close(got, full[selected], atol=1e-5, rtol=1e-5)
    empty = student.forward_train(xt, x0, torch.zeros_like(selected), block_size=4)
    assert empty.shape == (0, VOCAB)


@torch.no_grad()
def test_noisy_block_depends_only_on_past_clean_blocks():
    student = tiny_student()
    x0 = ids(1, 12)
    xt = torch.full_like(x0, MASK)
    base = student.forward_train(xt, x0, all_positions(xt), 4).view(12, VOCAB)
    x0_future = x0.clone()
    x0_future[:, 8:] = (x0[:, 8:] + 1) % 60  # changes only clean block 2
    moved = student.forward_train(xt, x0_future, all_positions(xt), 4).view(12, VOCAB)
    # No noisy block sees it: blocks 0 and 1 are earlier, block 2 never sees its own clean copy.
    torch.testing.assert_close(moved, base)
    # ...but it does see the clean past: change block 0's clean tokens.
    x0_past = x0.clone()
    x0_past[:, :4] = (x0[:, :4] + 1) % 60
    past = student.forward_train(xt, x0_past, all_positions(xt), 4).view(12, VOCAB)
    torch.testing.assert_close(past[:4], base[:4])
    assert not torch.allclose(past[4:], base[4:])


@torch.no_grad()
def test_block_by_block_with_cache_equals_full_forward():
    student = tiny_student()
    batch, length, bk = 2, 12, 4
    x0 = ids(batch, length)
    noise = torch.rand(batch, length, generator=torch.Generator().manual_seed(2))
    xt = torch.where(noise < 0.6, MASK, x0)
    full = student.forward_train(xt, x0, all_positions(xt), bk).view(batch, length, VOCAB)
    pos = torch.arange(length)[None].expand(batch, -1)
    cache = student.prefill(x0[:, :0], pos[:, :0], all_positions(x0[:, :0]), bk)
    for start in range(0, length, bk):
        block = slice(start, start + bk)
        before = [k.clone() for k in cache.keys]
        logits = student.forward_block(cache, xt[:, block], pos[:, block])
        # Nothing committed: the block's keys only went to scratch slots past the prefix.
        assert cache.length == start and all(map(torch.equal, cache.keys, before))
        torch.testing.assert_close(logits, full[:, block], atol=1e-5, rtol=1e-5)
        cache = student.extend_cache(cache, x0[:, block], pos[:, block])
    assert cache.length == length and len(cache.keys) == student.num_layers
    # A prefix prefilled in one call gives the same cache as block-by-block commits.
    prefilled = student.prefill(x0[:, :8], pos[:, :8], all_positions(x0[:, :8]), bk)
    logits = student.forward_block(prefilled, xt[:, 8:], pos[:, 8:])
    torch.testing.assert_close(logits, full[:, 8:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_one_forward_commit_and_denoise_equals_two_forwards():
    student = tiny_student()
    bk = 4
    x0 = ids(2, 12, seed=5)
    valid = torch.ones_like(x0, dtype=torch.bool)
    valid[1, :3] = False  # left padding in row 1's prompt
    pos = position_ids_from_mask(valid)
    noisy = torch.full((2, bk), MASK)
    noisy[:, 1] = 7
    noisy_pos = pos[:, -1:] + 1 + torch.arange(bk)
    two = student.prefill(x0[:, :8], pos[:, :8], valid[:, :8], bk)
    two = student.extend_cache(two, x0[:, 8:], pos[:, 8:])
    want = student.forward_block(two, noisy, noisy_pos)
    # The prompt and one committed block: with an empty cache, then with a prefilled one.
    one = student.prefill(x0[:, :0], pos[:, :0], valid[:, :0], bk)
    at = noisy == MASK
    got = student.extend_and_forward_block(one, x0, pos, noisy, noisy_pos, bk, valid, logits_at=at)
    torch.testing.assert_close(got, want[at], atol=1e-5, rtol=1e-5)
    assert one.length == 12 and torch.equal(one.key_valid, valid)
    for a, b in zip(one.keys + one.values, two.keys + two.values, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    stepwise = student.prefill(x0[:, :8], pos[:, :8], valid[:, :8], bk)
    got = student.extend_and_forward_block(stepwise, x0[:, 8:], pos[:, 8:], noisy, noisy_pos, bk)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of the block size"):
        student.extend_and_forward_block(stepwise, x0[:, :2], pos[:, :2], noisy, noisy_pos, bk)


@torch.no_grad()
def test_cache_grows_past_its_capacity_and_selects_rows():
    student = tiny_student()
    x0 = ids(3, 16, seed=6)
    pos = torch.arange(16)[None].expand(3, -1)
    roomy = student.prefill(x0[:, :4], pos[:, :4], all_positions(x0[:, :4]), 4, capacity=16)
    tight = student.prefill(x0[:, :4], pos[:, :4], all_positions(x0[:, :4]), 4)
    assert roomy.capacity == 16 and tight.capacity == 4
    for start in (4, 8):
        for cache in (roomy, tight):
            student.extend_cache(cache, x0[:, start : start + 4], pos[:, start : start + 4])
    assert tight.capacity >= 12 and roomy.capacity == 16 and tight.length == roomy.length == 12
    for a, b in zip(tight.keys + tight.values, roomy.keys + roomy.values, strict=True):
        torch.testing.assert_close(a, b)
    block, block_pos = torch.full((3, 4), MASK), pos[:, 12:]
    full = student.forward_block(roomy, block, block_pos)
    rows = torch.tensor([True, False, True])
    kept = roomy.select_rows(rows)
    assert kept.batch_size == 2 and kept.length == 12
    torch.testing.assert_close(
        student.forward_block(kept, block[rows], block_pos[rows]), full[rows]
    )


@torch.no_grad()
def test_left_padded_prompt_matches_unpadded():
    student = tiny_student()
    bk = 4
    prompt = ids(1, 2, seed=3)
    padded = torch.cat([torch.full((1, 2), PAD), prompt], dim=1)
    valid = torch.tensor([[False, False, True, True]])
    pos = position_ids_from_mask(valid)
    assert pos.tolist() == [[0, 0, 0, 1]]
    block = torch.full((1, bk), MASK)
    block_pos = torch.arange(2, 2 + bk)[None]
    cache = student.prefill(padded, pos, valid, bk)
    got = student.forward_block(cache, block, block_pos)
    # Reference: the same two real tokens with no padding at all.
    ref_cache = student.prefill(prompt, torch.arange(2)[None], all_positions(prompt), 2)
    want = student.forward_block(ref_cache, block, block_pos)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # Pad ids are never read.
    other = student.prefill(padded.masked_fill(~valid, 7), pos, valid, bk)
    torch.testing.assert_close(student.forward_block(other, block, block_pos), got)
    assert torch.isfinite(got).all()
    # Dropping the padding keys (then attention runs with no mask) changes nothing, and the
    # next block still starts a block of its own although 2 is not a multiple of Bk.
    compact = cache.without_padding()
    assert compact.length == 2 and compact.key_valid.all() and cache.length == 4
    torch.testing.assert_close(student.forward_block(compact, block, block_pos), got)
    nxt = torch.full((1, bk), MASK)
    padded_logits = student.extend_and_forward_block(
        cache, block, block_pos, nxt, block_pos + bk, bk
    )
    compact_logits = student.extend_and_forward_block(
        compact, block, block_pos, nxt, block_pos + bk, bk
    )
    torch.testing.assert_close(compact_logits, padded_logits, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    x0 = ids(2, 8)
    xt = torch.where(torch.rand(2, 8, generator=torch.Generator().manual_seed(4)) < 0.5, MASK, x0)
    grads = []
    for checkpointing in (False, True):
        student = tiny_student().train()
        if checkpointing:
            student.gradient_checkpointing_enable()
        student.forward_train(xt, x0, xt == MASK, 4).logsumexp(-1).sum().backward()
        grads.append(student.model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_rejects_mask_outside_embedding_and_eager_attention():
    with pytest.raises(ValueError, match="mask_token_id 64"):
        build_student(VOCAB, 32, 1, 4, mask_token_id=64)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
    )
    model = Qwen3ForCausalLM(config)
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="eager"):
        BD3LMStudent(model, MASK)
    with pytest.raises(ValueError, match="'eager'"):
        tiny_student().set_attention("eager")


def test_save_and_load_round_trip(tmp_path):
    student = tiny_student()
    tok = tiny_tokenizer()
    assert tok.convert_tokens_to_ids("<|mask|>") == MASK
    student.save_pretrained(tmp_path, tokenizer=tok)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "a2d-qwen3"
    loaded, loaded_tok = load_student(tmp_path, attention="sdpa")
    assert loaded.mask_token_id == MASK and len(loaded_tok) == len(tok)
    x0 = ids(2, 8)
    xt = x0.masked_fill(torch.arange(8) % 3 == 0, MASK)
    with torch.no_grad():
        want = student.forward_train(xt, x0, xt == MASK, 4)
        got = loaded.eval().forward_train(xt, x0, xt == MASK, 4)
    torch.testing.assert_close(got, want)


def test_loads_plain_qwen3_model_type(tmp_path):
    tiny_student().save_pretrained(tmp_path, tokenizer=tiny_tokenizer())
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "qwen3"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, _ = load_student(tmp_path, attention="sdpa")
    assert loaded.mask_token_id == MASK


def test_load_failures_name_the_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_student(tmp_path / "missing")
    no_mask = tmp_path / "no_mask"
    tiny_student().save_pretrained(no_mask, tokenizer=tiny_tokenizer(with_mask=False))
    with pytest.raises(ValueError, match="<\\|mask\\|>"):
        load_student(no_mask)
    too_small = tmp_path / "too_small"
    # 70 words + pad + unk + mask = 73 tokens > 64 embedding rows; mask id 72.
    tiny_student().save_pretrained(too_small, tokenizer=tiny_tokenizer(words=70))
    with pytest.raises(ValueError, match="72"):
        load_student(too_small)
    wrong_type = tmp_path / "wrong_type"
    tiny_student().save_pretrained(wrong_type, tokenizer=tiny_tokenizer())
    config = json.loads((wrong_type / "config.json").read_text())
    config["model_type"] = "llama"
    (wrong_type / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'llama'"):
        load_student(wrong_type)


@pytest.mark.parametrize("clean_first", [False, True])
def test_flex_mask_mod_is_the_dense_mask(clean_first):
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4:] = False
    dense = bd3lm_batch_mask(valid, 6, 2, clean_first)[:, 0]
    b = torch.arange(2)[:, None, None]
    q = torch.arange(12)[None, :, None]
    kv = torch.arange(12)[None, None, :]
    assert torch.equal(bd3lm_mask_mod(valid, 6, 2, clean_first)(b, 0, q, kv), dense)
    # Hand-worked rows (student layout, L=6, Bk=2): noisy query 2 (block 1) sees noisy 2-3
    # and clean block 0 (keys 6-7); clean query 8 (block 1) sees clean keys 6-9.
    if not clean_first:
        assert dense[0, 2].nonzero().flatten().tolist() == [2, 3, 6, 7]
        assert dense[0, 8].nonzero().flatten().tolist() == [6, 7, 8, 9]
        # Row 1 pads positions 4-5: its real queries never see them, a pad sees itself.
        assert dense[1, 4].nonzero().flatten().tolist() == [4, 6, 7, 8, 9]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_attention_matches_sdpa_on_cuda():
    sdpa = tiny_student().cuda()
    flex = copy.deepcopy(sdpa)
    flex.model.set_attn_implementation("flex_attention")
    x0 = ids(2, 128).cuda()
    xt = torch.where(torch.rand(2, 128, device="cuda") < 0.5, MASK, x0)
    valid = torch.ones_like(x0, dtype=torch.bool)
    valid[1, 96:] = False
    sel = (xt == MASK) & valid
    with torch.no_grad():
        want = sdpa.forward_train(xt, x0, sel, 32, attention_mask=valid)
        got = flex.forward_train(xt, x0, sel, 32, attention_mask=valid)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_published_layout_with_the_real_qwen3_tokenizer(qwen3, tmp_path):
    """Qwen3 tokenizer + `<|mask|>` (id 151669) over 151,936 embedding rows, as published."""
    assert qwen3.convert_tokens_to_ids("<|mask|>") == 151669
    student = build_student(151936, 16, 1, 2, mask_token_id=151669, seed=0)
    student.save_pretrained(tmp_path, tokenizer=qwen3)
    loaded, tok = load_student(tmp_path, attention="sdpa")
    assert loaded.mask_token_id == 151669 and loaded.vocab_size == 151936 and len(tok) == 151670


def test_prefix_block_mask_hand_worked():
    # Prefix of 2 (first key is left padding), then two committed blocks of 2.
    valid = torch.tensor([[False, True, True, True, True, True]])
    causal = prefix_block_mask(valid, query_len=4, block_size=2, bidirectional_query=False)[0, 0]
    assert causal.int().tolist() == [
        [0, 1, 1, 1, 0, 0],  # query 2 (block 1): valid prefix and its own block
        [0, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1],  # query 4 (block 2): everything valid before and in its block
        [0, 1, 1, 1, 1, 1],
    ]
    noisy = prefix_block_mask(valid, query_len=4, block_size=2, bidirectional_query=True)[0, 0]
    assert noisy.int().tolist() == [[0, 1, 1, 1, 1, 1]] * 4
    additive = to_additive(torch.tensor([True, False]), torch.float32)
    assert additive.tolist() == [0.0, torch.finfo(torch.float32).min]


def test_appended_block_mask_counts_blocks_from_the_new_tokens():
    # A prefix of 3 keys (the first one padding), then 4 new tokens in blocks of 2.
    valid = torch.tensor([[False, True, True, True, True, True, True]])
    causal = appended_block_mask(valid, query_len=4, block_size=2, bidirectional_query=False)
    assert causal[0, 0].int().tolist() == [
        [0, 1, 1, 1, 1, 0, 0],  # first new block: valid prefix and itself
        [0, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1, 1],  # second new block: everything valid before and in it
        [0, 1, 1, 1, 1, 1, 1],
    ]
    # With a prefix that is a multiple of the block size it is prefix_block_mask.
    valid = torch.rand(2, 10, generator=torch.Generator().manual_seed(0)) < 0.7
    for bidirectional in (False, True):
        assert torch.equal(
            appended_block_mask(valid, 6, 2, bidirectional),
            prefix_block_mask(valid, 6, 2, bidirectional),
        )
