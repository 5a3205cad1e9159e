"""align_messages: each side's own chat template, content-only chunks, prompt labels."""

from __future__ import annotations

import pytest
from test_alignment_invariants import chunk_tokens

from tide_lightning.method.alignment import align_messages, byte_table
from tide_lightning.method.alignment.chat import content_regions, render_chat

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "user"},
    {"role": "assistant", "content": "The answer: 42 is user.\n    indented()"},
]


def _check_chat(al, s_tok, t_tok, messages):
    """Chunks lie in contents, hold no special token, and are byte-equal on both sides."""
    s_table, t_table = byte_table(s_tok), byte_table(t_tok)
    contents = "".join(m["content"] for m in messages).encode()
    prev_s = prev_t = 0
    for a, b, c, d in al.chunks:
        assert prev_s <= a < b and prev_t <= c < d
        prev_s, prev_t = b, d
        sb = b"".join(s_table.token_bytes(i) for i in al.student_ids[a:b])
        tb = b"".join(t_table.token_bytes(i) for i in al.teacher_ids[c:d])
        assert sb == tb and sb in contents
        assert not s_table.special[al.student_ids[a:b]].any()
        assert not t_table.special[al.teacher_ids[c:d]].any()
    assert len(al.student_prompt) == len(al.student_ids)
    assert len(al.teacher_prompt) == len(al.teacher_ids)


def test_qwen3_renders_without_thinking(qwen3):
    text = render_chat(qwen3, CHAT)
    assert "<think>\n\n</think>\n\nThe answer" in text


def test_content_equal_to_role_name_is_found_in_place(qwen3, mistral_v1):
    for tok in (qwen3, mistral_v1):
        text, regions = content_regions(tok, CHAT)
        for (start, end, _), m in zip(regions, CHAT, strict=True):
            assert text[start:end] == m["content"]
        # "user" occurs in the template before the content itself.
        if tok is qwen3:
            assert text.find("user") < regions[1][0]


def test_chat_chunks_and_labels_qwen3_mistral(qwen3, mistral_v1):
    al = align_messages(qwen3, mistral_v1, CHAT)
    _check_chat(al, qwen3, mistral_v1, CHAT)
    pairs = chunk_tokens(al, qwen3, mistral_v1)
    # "Be" is lost: Mistral's "▁Be" also holds the template's space after "[INST]".
    assert pairs == [
        ((".",), (".",)),
        (("user",), ("user",)),  # the user content, not the role marker
        (("The",), ("The",)),
        (("Ġanswer",), ("▁answer",)),
        ((":",), (":",)),
        (("Ġ",), ("▁",)),
        (("4",), ("4",)),
        (("2",), ("2",)),
        (("Ġis",), ("▁is",)),
        (("Ġuser",), ("▁user",)),
        ((".Ċ",), (".", "<0x0A>")),
        (("ĠĠĠ", "Ġind", "ented"), ("▁▁▁▁", "indent", "ed")),
        (("()",), ("()",)),
    ]
    s_tokens = qwen3.convert_ids_to_tokens(al.student_ids)
    response = [t for t, p in zip(s_tokens, al.student_prompt, strict=True) if not p]
    assert response[0] == "The" and response[-1] == "<|im_end|>"
    t_tokens = mistral_v1.convert_ids_to_tokens(al.teacher_ids)
    t_response = [t for t, p in zip(t_tokens, al.teacher_prompt, strict=True) if not p]
    assert t_response[0] == "The" and t_response[-1] == "</s>"
    # Every chunk of the assistant turn is response on both sides; the user "user" is prompt.
    for a, b, c, d in al.chunks:
        assert len(set(al.student_prompt[a:b])) == 1
        assert set(al.student_prompt[a:b]) == set(al.teacher_prompt[c:d])


@pytest.mark.parametrize("pair", [("small_bpe", "small_unigram"), ("qwen3", "small_bpe")])
def test_chat_invariants_small_tokenizers(request, pair):
    s_tok, t_tok = (request.getfixturevalue(n) for n in pair)
    messages = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4.\n\tTabs\tand  spaces."},
        {"role": "user", "content": "What is 2 + 2?"},  # same content twice
        {"role": "assistant", "content": "4"},
    ]
    al = align_messages(s_tok, t_tok, messages)
    _check_chat(al, s_tok, t_tok, messages)
    assert al.num_chunks > 5
    assert sum(not p for p in al.student_prompt) > 0
    assert sum(not p for p in al.teacher_prompt) > 0


def test_chat_truncation(qwen3, mistral_v1):
    full = align_messages(qwen3, mistral_v1, CHAT)
    cut = align_messages(qwen3, mistral_v1, CHAT, max_student_len=25, max_teacher_len=20)
    assert len(cut.student_ids) == 25 and len(cut.teacher_ids) == 20
    assert len(cut.student_prompt) == 25
    assert set(cut.chunks) <= set(full.chunks)
    assert all(b <= 25 and d <= 20 for _, b, _, d in cut.chunks)


def test_same_tokenizer_chat_aligns_every_content_token(qwen3):
    al = align_messages(qwen3, qwen3, CHAT)
    assert all(b - a == 1 and d - c == 1 and a == c for a, b, c, d in al.chunks)
    assert al.student_prompt == al.teacher_prompt


def test_supervised_turns_rules():
    from tide_lightning.method.alignment.chat import supervised_turns

    roles = ["system", "user", "assistant", "user", "assistant", "user"]
    assert supervised_turns(roles) == [False, False, False, False, True, False]
    assert supervised_turns(roles, "all_turns") == [False, False, True, False, True, False]
    assert supervised_turns(["user"]) == [False]
    with pytest.raises(ValueError, match="supervision"):
        supervised_turns(roles, "every")
