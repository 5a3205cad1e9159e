"""Shared helpers for the data tests: a tiny in-process tokenizer and corpus writers."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = "the quick brown fox jumps over a lazy dog while coding python def return 0123456789"


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained in-process on a few sentences, with a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([WORDS] * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw str/bytes lines) as a JSONL file."""
    with open(path, "wb") as f:
        for r in records:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r))
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def text_corpus(path: Path, n: int, words: int = 12) -> Path:
    """JSONL of ``n`` distinct plain-text documents ("doc<i> w ...")."""
    vocab = WORDS.split()
    recs = [
        {
            "text": f"doc{i} "
            + " ".join(vocab[(i * 7 + k) % len(vocab)] for k in range(words + i % 5))
        }
        for i in range(n)
    ]
    return write_jsonl(path, recs)


def chat_corpus(path: Path, n: int) -> Path:
    """JSONL of ``n`` distinct chat records."""
    recs = [
        {
            "messages": [
                {"role": "user", "content": f"question {i} about the fox"},
                {"role": "assistant", "content": f"answer {i}: the dog"},
            ]
        }
        for i in range(n)
    ]
    return write_jsonl(path, recs)
