"""The published data protocol on real tokenizers: last-turn supervision, the aligned
teacher view of the shared pipeline (own chat template, paired positions, the cut) and
the cross pipeline's teacher cut at the student's truncation point."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest

from tide_lightning.data.collate import collate
from tide_lightning.data.examples import (
    Example,
    ExampleBuilder,
    aligned_chat_example,
    chat_example,
)
from tide_lightning.method.alignment import align_messages
from tide_lightning.method.alignment.positions import align_positions, cut_pairs

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "content": "It is 42."},
    {"role": "user", "content": "And in words?"},
    {"role": "assistant", "content": "Forty-two, written out: 混合 text 😀 and more words."},
]
LAST = CHAT[-1]["content"]

# A second template on the Qwen3 vocabulary (WeDLM-like: a default system prompt, no
# think block), so every answer token sits at another position than in Qwen3's own.
SECOND_TEMPLATE = (
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- for m in messages %}{%- if m['role'] != 'system' %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
)


@pytest.fixture(scope="module")
def teacher_tok(qwen3):
    tok = copy.deepcopy(qwen3)
    tok.chat_template = SECOND_TEMPLATE
    return tok


def _supervised(tok, ex: Example) -> str:
    return tok.decode([i for i, m in zip(ex.input_ids, ex.maskable, strict=True) if m])


# ------------------------------------------------------------------ supervision
@pytest.mark.parametrize("name", ["qwen3", "mistral_v1"])
def test_last_turn_supervises_only_the_final_answer(request, name):
    tok = request.getfixturevalue(name)
    eos = tok.eos_token
    last = chat_example(tok, CHAT, 128, 32, tok.eos_token_id)  # default: last_turn
    every = chat_example(tok, CHAT, 128, 32, tok.eos_token_id, "all_turns")
    assert last.input_ids == every.input_ids
    fill = eos * (
        len(last.input_ids) - len(tok(_render(tok), add_special_tokens=False)["input_ids"])
    )
    assert _supervised(tok, last).replace(" ", "") == (LAST + eos + fill).replace(" ", "")
    assert _supervised(tok, every).replace(" ", "") == (
        "It is 42." + eos + LAST + eos + fill
    ).replace(" ", "")
    # Everything before the final answer is prompt under last_turn.
    first = last.maskable.index(True)
    assert "It is 42." in tok.decode(last.input_ids[:first])


def _render(tok):
    return tok.apply_chat_template(CHAT, tokenize=False, enable_thinking=False)


def test_last_turn_in_the_cross_alignment_labels_both_sides(qwen3, mistral_v1):
    for supervision, answers in [("last_turn", 1), ("all_turns", 2)]:
        al = align_messages(qwen3, mistral_v1, CHAT, supervision=supervision)
        for tok, ids, prompt in [
            (qwen3, al.student_ids, al.student_prompt),
            (mistral_v1, al.teacher_ids, al.teacher_prompt),
        ]:
            text = tok.decode([i for i, p in zip(ids, prompt, strict=True) if not p])
            assert text.count(tok.eos_token) == answers
            assert ("It is 42." in text) == (answers == 2) and "Forty-two" in text


def test_bad_supervision_is_refused(qwen3):
    with pytest.raises(ValueError, match="supervision"):
        chat_example(qwen3, CHAT, 128, 32, qwen3.eos_token_id, "first_turn")


# ------------------------------------------------------------ aligned teacher view
def test_positions_pair_identical_tokens_of_every_answer(qwen3, teacher_tok):
    al = align_positions(qwen3, teacher_tok, CHAT)
    s, t = al.pairs[:, 0], al.pairs[:, 1]
    assert (s[1:] > s[:-1]).all() and (t[1:] > t[:-1]).all()
    assert [al.student_ids[i] for i in s] == [al.teacher_ids[j] for j in t]
    assert (t != s).all()  # the second template moved every answer token
    # Both answers' contents, whole: the same text tokenizes the same way on both sides.
    assert qwen3.decode([al.student_ids[i] for i in s]) == "It is 42." + LAST
    assert sum(al.student_answer) == len(qwen3(LAST)["input_ids"]) + 1  # + <|im_end|>


def test_aligned_example_cut_fill_and_positions(qwen3, teacher_tok):
    ex = aligned_chat_example(
        qwen3, teacher_tok, CHAT, 128, 768, 32, qwen3.eos_token_id, teacher_tok.eos_token_id
    )
    pos = ex.aligned_teacher_pos
    assert len(pos) == len(ex.input_ids) and len(ex.teacher_input_ids) % 32 == 0
    pairs = [(i, p) for i, p in enumerate(pos) if p >= 0]
    assert all(ex.input_ids[i] == ex.teacher_input_ids[p] for i, p in pairs)
    # Distilled positions = maskable and aligned: the final answer's content only (its
    # end-of-turn token and the EOS fill have no teacher counterpart).
    distilled = [ex.input_ids[i] for i, p in pairs if ex.maskable[i]]
    assert qwen3.decode(distilled) == LAST
    # The teacher sequence ends at the last aligned token, then EOS fill to the block.
    last = max(p for _, p in pairs)
    assert teacher_tok.decode(ex.teacher_input_ids[: last + 1]).endswith(LAST)
    assert set(ex.teacher_input_ids[last + 1 :]) == {teacher_tok.eos_token_id}
    assert teacher_tok.decode(ex.teacher_input_ids).startswith("<|im_start|>system\nYou are")


def test_aligned_student_truncation_cuts_the_teacher_there(qwen3, teacher_tok):
    ex = aligned_chat_example(
        qwen3, teacher_tok, CHAT, 64, 768, 32, qwen3.eos_token_id, teacher_tok.eos_token_id
    )
    assert len(ex.input_ids) == 64
    pairs = [(i, p) for i, p in enumerate(ex.aligned_teacher_pos) if p >= 0]
    assert max(i for i, _ in pairs) < 64
    last = max(p for _, p in pairs)
    seen_by_teacher = teacher_tok.decode(ex.teacher_input_ids[: last + 1]).split("\n")[-1]
    seen_by_student = qwen3.decode(ex.input_ids).split("\n")[-1]
    assert LAST.startswith(seen_by_teacher) and seen_by_student.startswith(seen_by_teacher)
    assert 0 < len(seen_by_teacher) < len(LAST)  # the cut falls inside the final answer


def test_cut_pairs_at_the_teacher_length():
    import numpy as np

    pairs = np.array([[3, 10], [4, 11], [5, 12], [9, 30]])
    kept, cut = cut_pairs(pairs, 8, 64)
    assert kept.tolist() == [[3, 10], [4, 11], [5, 12]] and cut == 13
    kept, cut = cut_pairs(pairs, 100, 12)
    assert kept.tolist() == [[3, 10], [4, 11]] and cut == 12
    kept, cut = cut_pairs(pairs[:0], 8, 64)
    assert len(kept) == 0 and cut == 64


def test_builder_aligned_view_and_collate(qwen3, teacher_tok):
    b = ExampleBuilder(
        qwen3, 128, 32, qwen3.eos_token_id, "shared", teacher_tok, 96, teacher_view="aligned"
    )
    chat = b.example(SimpleNamespace(text=None, messages=CHAT))
    text = b.example(SimpleNamespace(text="Plain text for the teacher. " * 30, messages=None))
    assert text.teacher_input_ids == text.input_ids[:96]
    assert text.aligned_teacher_pos == list(range(96)) + [-1] * 32
    packed = Example(list(range(100, 228)), [True] * 128)  # a packed row: no teacher view
    batch = collate([chat, packed, text], qwen3.pad_token_id, teacher_tok.pad_token_id)
    pos, t_ids = batch["aligned_teacher_pos"], batch["teacher_input_ids"]
    assert pos.shape == batch["input_ids"].shape and t_ids.shape[1] == 128
    assert pos[1].tolist() == list(range(128))  # the packed row reads itself
    rows, cols = (pos >= 0).nonzero(as_tuple=True)
    assert (batch["input_ids"][rows, cols] == t_ids[rows, pos[rows, cols]]).all()
    assert batch["teacher_attention_mask"][0].sum() == len(chat.teacher_input_ids)
    with pytest.raises(ValueError, match="multiple of block_size"):
        ExampleBuilder(
            qwen3, 128, 32, qwen3.eos_token_id, "shared", teacher_tok, 100, teacher_view="aligned"
        )


# ------------------------------------------------------------- cross teacher cut
def test_cross_teacher_never_sees_text_the_student_does_not(qwen3, mistral_v1):
    full = ExampleBuilder(qwen3, 128, 32, qwen3.eos_token_id, "cross", mistral_v1, 1024)
    cut = ExampleBuilder(qwen3, 64, 32, qwen3.eos_token_id, "cross", mistral_v1, 1024)
    chat = SimpleNamespace(text=None, messages=CHAT)
    ex_full, ex_cut = full.example(chat), cut.example(chat)
    # Untruncated: the teacher ends with its last chunk (its trailing </s> is template).
    assert mistral_v1.decode(ex_full.teacher_input_ids).endswith(LAST)
    student_answer = qwen3.decode(ex_cut.input_ids).split("\n")[-1]
    teacher_answer = mistral_v1.decode(ex_cut.teacher_input_ids).split("[/INST]")[-1]
    assert 0 < len(teacher_answer) <= len(student_answer) < len(LAST)
    assert student_answer.startswith(teacher_answer)
    assert ex_cut.teacher_chunk_ids[-1] == max(ex_cut.teacher_chunk_ids)
    # Raw text: the teacher's text is a prefix of what the student keeps.
    doc = SimpleNamespace(text="The quick brown fox, 12345 jumps. " * 20, messages=None)
    ex = cut.example(doc)
    s_text = qwen3.decode([i for i in ex.input_ids if i != qwen3.eos_token_id])
    t_text = mistral_v1.decode(ex.teacher_input_ids, skip_special_tokens=True)
    assert s_text.startswith(t_text) and len(t_text) > 100
    # Then the teacher length caps it.
    short = ExampleBuilder(qwen3, 64, 32, qwen3.eos_token_id, "cross", mistral_v1, 20)
    assert len(short.example(doc).teacher_input_ids) <= 20
