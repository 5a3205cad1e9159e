"""Offline tokenizer loaders and the small trained tokenizers."""

from __future__ import annotations

from tide_lightning.data.tokenization import MASK_TOKEN


def test_qwen3(qwen3):
    assert len(qwen3) == 151_670
    assert qwen3.mask_token == MASK_TOKEN and qwen3.mask_token_id == 151_669
    assert qwen3.eos_token == "<|im_end|>" and qwen3.pad_token == "<|endoftext|>"
    assert qwen3("12345").input_ids == qwen3.convert_tokens_to_ids(list("12345"))
    assert qwen3.bos_token_id is None


def test_mistral_v1(mistral_v1):
    assert len(mistral_v1) == 32_001 and mistral_v1.mask_token_id == 32_000
    ids = mistral_v1("Hello 🦜").input_ids
    assert ids[0] == mistral_v1.bos_token_id == 1
    assert "<0xF0>" in mistral_v1.convert_ids_to_tokens(ids)
    assert mistral_v1.decode(ids, skip_special_tokens=True) == "Hello 🦜"
    text = mistral_v1.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert text == "<s>[INST] hi [/INST]yo</s>"


def test_small_tokenizers(small_bpe, small_unigram):
    for tok in (small_bpe, small_unigram):
        assert tok.mask_token == MASK_TOKEN and tok.eos_token == "<|im_end|>"
        assert tok.pad_token_id is not None
        chat = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
            tokenize=False,
        )
        assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    text = "def f(x):\n    return 12345  # 你好"
    assert small_bpe.decode(small_bpe(text).input_ids) == text  # byte-level: lossless
    ids = small_unigram(text).input_ids
    assert ids[0] == small_unigram.bos_token_id
    assert small_unigram.unk_token_id in ids  # CJK unseen, no byte fallback
