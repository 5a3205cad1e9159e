"""Offline tokenizer loaders and the small trained tokenizers."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np

from tide_lightning.data.tokenization import MASK_TOKEN, train_unigram_metaspace
from tide_lightning.method.alignment import byte_table
from tide_lightning.training.demo_corpus import program


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


def _demo_unigram_digest() -> dict:
    """The demo's Unigram tokenizer (512 pieces, 400 generated programs), summarised.

    Also run in fresh interpreters by `test_unigram_training_is_deterministic`.
    """
    rng = random.Random(0)
    tok = train_unigram_metaspace([program(rng) for _ in range(400)], vocab_size=512)
    rng = random.Random(1)
    probes = [program(rng) for _ in range(20)] + ["Zebra 你好  x\n\ty"]
    return {
        "size": len(tok),
        "tokenizer": hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest(),
        "vocab": sorted(tok.get_vocab().items()),
        "ids": [tok(t).input_ids for t in probes],
    }


def test_unigram_training_is_deterministic(tmp_path):
    first, second = _demo_unigram_digest(), _demo_unigram_digest()
    assert first == second and first["size"] == 512
    code = (
        "import json, runpy, sys; "
        "print(json.dumps(runpy.run_path(sys.argv[1])['_demo_unigram_digest']()))"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, __file__],
            cwd=tmp_path,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        assert json.loads(out) == json.loads(json.dumps(first))
    assert not any(tmp_path.iterdir())  # trained in memory: no model or vocab file written


def test_unigram_pieces_spell_the_text(small_unigram):
    table = byte_table(small_unigram)
    tokens = small_unigram.convert_ids_to_tokens(list(range(len(small_unigram))))
    assert tokens[:6] == ["<unk>", "<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", MASK_TOKEN]
    assert table.special[:6].all() and not table.lengths[:6].any()
    assert not table.special[6:].any()
    for i, token in enumerate(tokens[6:], start=6):
        # Metaspace splits before every space: a piece holds one, at its start at most.
        assert "▁" not in token[1:] and not token.startswith("<0x"), token
        assert table.token_bytes(i) == token.replace("▁", " ").encode("utf-8")
    texts = [
        "The quick brown fox jumps over the lazy dog.\n",
        "def step(self, value):\n        for i in range(value):\n            return 2024\n",
        "user\nWhat is 2 + 2?\n\tTabs\tand  spaces.",
        "  two leading spaces",
    ]
    for text in texts:
        ids = small_unigram(text).input_ids
        assert small_unigram.unk_token_id not in ids
        # The prefix space is prepended unless the text already starts with one.
        spelled = text if text.startswith(" ") else " " + text
        assert table.gather(np.asarray(ids)).tobytes() == spelled.encode("utf-8")
        if not text.startswith(" "):  # the decoder drops a leading space as the prepended one
            assert small_unigram.decode(ids, skip_special_tokens=True) == text
