"""Tokenization of one record and collation: hand-worked numbers and properties."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_data_fixtures import tiny_tokenizer

from tide_lightning.data.collate import collate
from tide_lightning.data.examples import (
    Example,
    ExampleBuilder,
    chat_example,
    cross_example,
    fill_to_block,
    response_token_mask,
    text_example,
)
from tide_lightning.method.alignment.chat import render_chat

EOS = 2


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_fill_to_block_hand_values():
    ids, mask = fill_to_block([5, 6, 7], [False, True, True], EOS, 4)
    assert ids == [5, 6, 7, EOS]
    assert mask == [False, True, True, True]  # filling EOS is supervised
    assert fill_to_block([5, 6, 7, 8], [True] * 4, EOS, 4) == ([5, 6, 7, 8], [True] * 4)
    assert fill_to_block([9], [False], EOS, 3) == ([9, EOS, EOS], [False, True, True])


def test_answer_labels_ignore_prompt_text_equal_to_an_answer(tok):
    msgs = [
        {"role": "user", "content": "a dog"},
        {"role": "assistant", "content": "a dog"},
    ]
    ids, answer = response_token_mask(tok, msgs)
    assert tok.decode([i for i, a in zip(ids, answer, strict=True) if a]) == "a dog<|im_end|>"
    assert "a dog" in tok.decode([i for i, a in zip(ids, answer, strict=True) if not a])


def test_chat_prompt_never_maskable_answer_and_fill_are(tok):
    msgs = [{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "a dog"}]
    ex = chat_example(tok, msgs, max_length=64, block_size=8, eos_id=tok.eos_token_id)
    assert len(ex.input_ids) % 8 == 0
    text = render_chat(tok, msgs)
    n_real = len(tok(text, add_special_tokens=False)["input_ids"])
    supervised = [i for i, m in zip(ex.input_ids[:n_real], ex.maskable[:n_real], strict=True) if m]
    assert tok.decode(supervised) == "a dog<|im_end|>"
    assert all(ex.maskable[n_real:])  # the EOS fill
    assert set(ex.input_ids[n_real:]) <= {tok.eos_token_id}
    first_answer = ex.maskable.index(True)
    assert "the fox" in tok.decode(ex.input_ids[:first_answer])


def test_chat_truncation_and_prompt_only(tok):
    msgs = [
        {"role": "user", "content": "the fox " * 3},
        {"role": "assistant", "content": "a dog " * 10},
    ]
    full = chat_example(tok, msgs, 256, 8, tok.eos_token_id)
    cut = chat_example(tok, msgs, 48, 8, tok.eos_token_id)
    assert len(cut.input_ids) == 48 and cut.input_ids == full.input_ids[:48]
    assert cut.maskable == full.maskable[:48]
    assert chat_example(tok, msgs, 8, 8, tok.eos_token_id) is None  # prompt fills the budget


def test_qwen3_chat_template_thinking_disabled():
    from tide_lightning.data.tokenization import load_qwen3_tokenizer

    q = load_qwen3_tokenizer(add_mask_token=False)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ]
    text = render_chat(q, msgs)
    assert text.count("<think>\n\n</think>") == 1  # the empty think block of thinking-off
    n_real = len(q(text, add_special_tokens=False)["input_ids"])
    for supervision, answer in [
        ("last_turn", "6, of course.<|im_end|>"),  # the default, as published
        ("all_turns", "4<|im_end|>6, of course.<|im_end|>"),
    ]:
        ex = chat_example(q, msgs, 64, 32, q.eos_token_id, supervision)
        assert len(ex.input_ids) == 64
        sup = [i for i, m in zip(ex.input_ids[:n_real], ex.maskable[:n_real], strict=True) if m]
        assert q.decode(sup) == answer


def test_text_example_all_maskable(tok):
    ex = text_example(tok, "the quick brown fox", 64, 8, EOS)
    ids = tok("the quick brown fox", add_special_tokens=False)["input_ids"]
    assert ex.input_ids[: len(ids) + 1] == ids + [EOS]
    assert all(ex.maskable) and len(ex.input_ids) % 8 == 0
    assert len(text_example(tok, "the fox " * 200, 64, 8, EOS).input_ids) == 64


def test_cross_example_chunk_ids_and_fill():
    al = SimpleNamespace(
        student_ids=[10, 11, 12], teacher_ids=[1, 20, 21], spans=[(0, 2, 1, 2), (2, 3, 2, 3)]
    )
    ex = cross_example(al, [True, False, False], [True, True, False], block_size=4, eos_id=EOS)
    assert ex.input_ids == [10, 11, 12, EOS]
    assert ex.maskable == [False, True, True, True]
    assert ex.student_chunk_ids == [0, 0, 1, -1]
    assert ex.teacher_chunk_ids == [-1, 0, 1]
    assert ex.teacher_maskable == [False, False, True]
    assert cross_example(al, [True] * 3, None, 4, EOS) is None


def test_cross_builder_on_text_uses_alignment(small_bpe, small_unigram):
    b = ExampleBuilder(small_bpe, 32, 8, small_bpe.eos_token_id or 0, "cross", small_unigram, 40)
    rec = SimpleNamespace(text="The quick brown fox 12345", messages=None)
    ex = b.example(rec)
    n = len(ex.input_ids)
    assert n % 8 == 0 and len(ex.teacher_input_ids) <= 40
    chunks = sorted(set(ex.student_chunk_ids) - {-1})
    assert chunks == sorted(set(ex.teacher_chunk_ids) - {-1}) and chunks == list(range(len(chunks)))


def test_collate_pads_on_block_boundary_and_never_maskable():
    a = Example([1, 2, 3, 4], [False, True, True, True])
    b = Example([5, 6, 7, 8, 9, 9, 9, 9], [True] * 8)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 0, 0, 0, 0], [5, 6, 7, 8, 9, 9, 9, 9]]
    assert batch["maskable"][0].tolist() == [False, True, True, True, False, False, False, False]
    assert batch["attention_mask"].sum(1).tolist() == [4, 8]
    assert collate([a], 0, pad_to=12)["input_ids"].shape == (1, 12)


def test_collate_cross_fields():
    a = Example([1, 2], [True, True], [7], [True], [0, -1], [0])
    b = Example([3, 4], [True, True], [8, 9, 9], [True] * 3, [0, 1], [0, 1, 1])
    batch = collate([a, b], pad_id=0, teacher_pad_id=99)
    assert batch["teacher_input_ids"].tolist() == [[7, 99, 99], [8, 9, 9]]
    assert batch["teacher_attention_mask"].tolist() == [[True, False, False], [True] * 3]
    assert batch["teacher_chunk_ids"].tolist() == [[0, -1, -1], [0, 1, 1]]
    assert batch["student_chunk_ids"].dtype == torch.long
    assert batch["teacher_maskable"][0].tolist() == [True, False, False]


def test_cross_builder_on_chat_labels_both_sides(small_bpe, small_unigram):
    b = ExampleBuilder(small_bpe, 64, 8, small_bpe.eos_token_id, "cross", small_unigram, 80)
    msgs = (
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4."},
    )
    ex = b.example(SimpleNamespace(text=None, messages=msgs))
    n = len(ex.input_ids)
    assert n % 8 == 0 and len(ex.student_chunk_ids) == n
    s_sup = [
        i
        for i, m, c in zip(ex.input_ids, ex.maskable, ex.student_chunk_ids, strict=True)
        if m and c >= 0
    ]
    t_sup = [
        i
        for i, m, c in zip(
            ex.teacher_input_ids, ex.teacher_maskable, ex.teacher_chunk_ids, strict=True
        )
        if m and c >= 0
    ]
    assert small_bpe.decode(s_sup) == "The answer is 4."
    assert small_unigram.decode(t_sup) == "The answer is 4."
    # prompt chunks exist (user content) but are not maskable on either side
    prompt_chunks = {
        c for c, m in zip(ex.student_chunk_ids, ex.maskable, strict=True) if c >= 0 and not m
    }
    assert prompt_chunks and prompt_chunks.isdisjoint(
        {c for c, m in zip(ex.teacher_chunk_ids, ex.teacher_maskable, strict=True) if m}
    )
