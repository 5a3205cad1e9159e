"""align_texts on real tokenizers (Qwen3 vs Mistral v1) and small trained ones."""

from __future__ import annotations

import inspect
import textwrap

import numpy as np
import pytest
from test_alignment_invariants import check_invariants, chunk_tokens

from tide_lightning.method.alignment import align_texts, byte_table
from tide_lightning.method.alignment.spans import TokenSpans, find_chunks

CASES = [
    "Pay 12345 now",
    "龘 🦜! 你好 😀 ok",
    "a  \t\t b\n\n\n  c \r\n end   ",
    "def f(x):\n    if x:\n\t\treturn [x,  1]\n    return None\n",
    " leading space",
    "   ",
    "e\u0301 caf\u00e9 <|im_end|> </s> <s> x",
    "",
]


@pytest.fixture(scope="module")
def pairs(qwen3, mistral_v1, small_bpe, small_unigram):
    return {
        "qwen3-mistral": (qwen3, mistral_v1),
        "mistral-qwen3": (mistral_v1, qwen3),
        "bpe-unigram": (small_bpe, small_unigram),
        "qwen3-unigram": (qwen3, small_unigram),
    }


@pytest.mark.parametrize("text", CASES)
@pytest.mark.parametrize("pair", ["qwen3-mistral", "mistral-qwen3", "bpe-unigram", "qwen3-unigram"])
def test_invariants_hold(pairs, pair, text):
    s_tok, t_tok = pairs[pair]
    al = align_texts(s_tok, t_tok, text)
    assert al.student_ids == s_tok(text).input_ids
    assert al.teacher_ids == t_tok(text).input_ids
    check_invariants(al, s_tok, t_tok, text)


def test_digits_are_aligned_one_by_one(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "Pay 12345 now")
    assert chunk_tokens(al, qwen3, mistral_v1) == [
        (("Pay",), ("▁Pay",)),
        (("Ġ",), ("▁",)),
        *[((d,), (d,)) for d in "12345"],
        (("Ġnow",), ("▁now",)),
    ]
    assert (al.student_left_out, al.teacher_left_out) == (0, 1)  # the teacher's BOS


def test_cjk_and_emoji_split_into_bytes(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "龘 🦜!")
    assert chunk_tokens(al, qwen3, mistral_v1) == [
        # The lone dummy-prefix "▁" joins the first chunk, as a merged "▁The" would.
        (("é¾",), ("▁", "<0xE9>", "<0xBE>")),
        (("ĺ",), ("<0x98>",)),
        (("ĠðŁ",), ("▁", "<0xF0>", "<0x9F>")),
        (("¦",), ("<0xA6>",)),
        (("ľ",), ("<0x9C>",)),
        (("!",), ("!",)),
    ]
    assert al.teacher_left_out == 1  # only BOS carries no text


@pytest.mark.parametrize("text", ["混合 text", "😀 ok"])
def test_lone_dummy_prefix_joins_the_following_chunk(qwen3, mistral_v1, text):
    """Mistral v1 writes "▁" alone before CJK/emoji; its factor belongs to the next chunk."""
    al = align_texts(qwen3, mistral_v1, text)
    assert mistral_v1.convert_ids_to_tokens(al.teacher_ids[:2]) == ["<s>", "▁"]
    first = al.chunks[0]
    assert first[2] == 1  # the chunk starts at the lone prefix, right after BOS
    assert al.teacher_left_out == 1  # only BOS
    # Both sides share the "▁": it belongs to the first chunk on each.
    same = align_texts(mistral_v1, mistral_v1, text)
    assert same.chunks[0][:2] == (1, 3) and same.chunks[0][2:] == (1, 3)
    assert same.student_left_out == same.teacher_left_out == 1


def test_whitespace_runs(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "a  \t\t b\n\n\n  c")
    assert chunk_tokens(al, qwen3, mistral_v1) == [
        (("a",), ("▁a",)),
        (("ĠĠĉĉ",), ("▁▁", "<0x09>", "<0x09>")),
        (("Ġb",), ("▁b",)),
        (("ĊĊĊ",), ("<0x0A>", "<0x0A>", "<0x0A>")),
        (("Ġ", "Ġc"), ("▁▁", "c")),
    ]


def test_code_indentation(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "if x:\n    y = 1\n")
    assert chunk_tokens(al, qwen3, mistral_v1) == [
        (("if",), ("▁if",)),
        (("Ġx",), ("▁x",)),
        ((":Ċ",), (":", "<0x0A>")),
        (("ĠĠĠ", "Ġy"), ("▁▁▁▁", "y")),
        (("Ġ=",), ("▁=",)),
        (("Ġ",), ("▁",)),
        (("1",), ("1",)),
        (("Ċ",), ("<0x0A>",)),
    ]


def test_leading_space(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, " leading")
    assert chunk_tokens(al, qwen3, mistral_v1) == [(("Ġleading",), ("▁leading",))]


def test_bos_on_one_side_only(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "Hello world")
    assert al.teacher_ids[0] == mistral_v1.bos_token_id
    assert all(c[2] >= 1 for c in al.chunks)
    assert (al.student_left_out, al.teacher_left_out) == (0, 1)
    no_bos = align_texts(qwen3, mistral_v1, "Hello world", add_special_tokens=False)
    assert no_bos.teacher_left_out == 0
    assert [(a, b, c - 1, d - 1) for a, b, c, d in al.chunks] == no_bos.chunks


@pytest.mark.parametrize("name", ["qwen3", "mistral_v1", "small_bpe", "small_unigram"])
def test_identical_tokenizers_give_one_token_chunks(request, name):
    tok = request.getfixturevalue(name)
    text = "The quick brown fox, 12 + 30 = 42;\n\tdef go():\n        pass  # done\n"
    al = align_texts(tok, tok, text)
    chunks = al.chunks
    if tok.convert_ids_to_tokens(al.student_ids[chunks[0][0]]) == "▁":
        # A lone dummy prefix (the Unigram one writes "▁", "The") joins the first chunk.
        assert chunks[0][1] - chunks[0][0] == 2
        chunks = chunks[1:]
    assert all(b - a == 1 and d - c == 1 for a, b, c, d in chunks)
    assert [(a, c) for a, _, c, _ in al.chunks] == [(a, a) for a, _, _, _ in al.chunks]
    specials = int(byte_table(tok).special[al.student_ids].sum())
    assert al.student_left_out == al.teacher_left_out == specials


def test_truncation_drops_the_cut_chunk(qwen3, mistral_v1):
    text = "ab\n\n\ncd"
    full = align_texts(qwen3, mistral_v1, text)
    # Teacher: <s> ▁ab <0x0A> <0x0A> <0x0A> cd; cut after the second newline byte.
    assert mistral_v1.convert_ids_to_tokens(full.teacher_ids)[:5] == [
        "<s>",
        "▁ab",
        "<0x0A>",
        "<0x0A>",
        "<0x0A>",
    ]
    cut = align_texts(qwen3, mistral_v1, text, max_teacher_len=4)
    assert len(cut.teacher_ids) == 4
    assert chunk_tokens(cut, qwen3, mistral_v1) == [(("ab",), ("▁ab",))]
    assert cut.student_left_out == len(cut.student_ids) - 1
    # A student-side cut inside the "ĊĊĊ" chunk's partner also drops it.
    cut_s = align_texts(qwen3, mistral_v1, text, max_student_len=1)
    assert chunk_tokens(cut_s, qwen3, mistral_v1) == [(("ab",), ("▁ab",))]


def test_empty_text(qwen3, mistral_v1):
    al = align_texts(qwen3, mistral_v1, "")
    assert al.chunks == [] and al.student_ids == [] and al.teacher_ids == [1]
    assert (al.student_left_out, al.teacher_left_out) == (0, 1)


def test_normalised_and_special_text_is_left_out(qwen3, mistral_v1):
    # Qwen3 applies NFC (e + combining acute -> é); "<|im_end|>" is a Qwen3 special token.
    text = "e\u0301 caf\u00e9 <|im_end|> x"
    al = align_texts(qwen3, mistral_v1, text)
    assert chunk_tokens(al, qwen3, mistral_v1) == [(("ĠcafÃ©",), ("▁café",)), (("Ġx",), ("▁x",))]
    check_invariants(al, qwen3, mistral_v1, text)


def test_unknown_tokens_are_left_out(small_bpe, small_unigram):
    text = "Zebra QQ jumps"  # capital letters unseen by the small Unigram -> <unk>
    al = align_texts(small_bpe, small_unigram, text)
    unk = small_unigram.unk_token_id
    assert unk in al.teacher_ids
    for _, _, c, d in al.chunks:
        assert unk not in al.teacher_ids[c:d]
    check_invariants(al, small_bpe, small_unigram, text)


def _stdlib_sources() -> list[str]:
    return [inspect.getsource(m) for m in (textwrap, inspect)]


def test_real_code_and_text_coverage(qwen3, mistral_v1):
    for source in _stdlib_sources():
        al = align_texts(qwen3, mistral_v1, source)
        check_invariants(al, qwen3, mistral_v1, source)
        assert al.coverage() >= 0.98
    prose = (
        "Diffusion language models decode all positions of a block in parallel. They start "
        "from a fully masked sequence and unmask over a few steps; the 0.6B student keeps "
        "its speed (41.0 vs 42.1 tokens/s) after distillation, at lr 5e-5 with 10% warmup.\n"
    ) * 20
    al = align_texts(qwen3, mistral_v1, prose)
    check_invariants(al, qwen3, mistral_v1, prose)
    assert al.coverage() >= 0.99


def test_wordpiece_owns_the_space_before_a_word(small_bpe):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    from tokenizers import decoders

    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(
        ["the fox jumps over the lazy dog"] * 5,
        trainers.WordPieceTrainer(vocab_size=60, special_tokens=["[UNK]"], show_progress=False),
    )
    wp_tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]")
    al = align_texts(small_bpe, wp_tok, "the fox  jumps")
    pairs = chunk_tokens(al, small_bpe, wp_tok)
    assert pairs[0][1] == ("the",)
    assert al.coverage() > 0.5  # words after a space still align ("Ġfox" ~ "fox")


def test_find_chunks_by_hand():
    # Text "abcdef": student a|bc|def, teacher ab|c|de|f -> chunks abc, def.
    s = TokenSpans(np.arange(3), np.array([0, 1, 3]), np.array([1, 3, 6]), np.ones(3, bool))
    t = TokenSpans(np.arange(4), np.array([0, 2, 3, 5]), np.array([2, 3, 5, 6]), np.ones(4, bool))
    assert find_chunks(s, t).tolist() == [[0, 2, 0, 2], [2, 3, 2, 4]]
    # A rejected teacher token in the second chunk drops that chunk only.
    t_bad = TokenSpans(t.index, t.lo, t.hi, np.array([True, True, False, True]))
    assert find_chunks(s, t_bad).tolist() == [[0, 2, 0, 2]]
