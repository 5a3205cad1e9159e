"""Token id -> exact byte string, built once per tokenizer and cached.

The alignment hot path never decodes tokens one at a time: it gathers byte
lengths (and, for the fast-path check, the bytes themselves) from the flat NumPy
arrays built here. How a token string maps to bytes depends on the tokenizer's
decoder, read from its serialised form:

- byte-level BPE (GPT-2 / Qwen / Ling): every character of the token string
  stands for one byte through the GPT-2 byte alphabet, which is inverted here;
- SentencePiece style (`Metaspace` decoder, or `Replace("▁", " ")` + `ByteFallback`):
  `▁` is a space and `<0xNN>` is the single byte NN;
- WordPiece: a `##` prefix marks a continuation and is dropped (the tokenizer
  drops whitespace, which the span builder accounts for);
- anything else: the token string's UTF-8 bytes.

Special tokens (BOS/EOS, chat-template markers, unk, mask) have no text bytes:
they get length 0 and `special = True`. Added tokens that are not special (e.g.
Qwen3's `<think>`) are matched literally in text, so their bytes are their content.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass

import numpy as np

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class TokenByteTable:
    """Byte strings of a whole vocabulary in flat arrays.

    Attributes:
        flat: uint8[total], every token's bytes concatenated in id order.
        starts: int64[V], offset of token v's bytes in `flat`.
        lengths: int64[V], byte length of token v (0 for special tokens).
        special: bool[V], True for tokens that carry no text (BOS, template markers, unk).
        drops_whitespace: True when the tokenizer discards whitespace (WordPiece), so a
            word-initial token owns the whitespace before it.
    """

    flat: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    special: np.ndarray
    drops_whitespace: bool

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token (b"" for a special token)."""
        s = int(self.starts[token_id])
        return self.flat[s : s + int(self.lengths[token_id])].tobytes()

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Concatenated bytes of a token sequence.

        Args:
            ids: int64[N] token ids.

        Returns:
            uint8[sum(lengths[ids])], the sequence's byte string.
        """
        lens = self.lengths[ids]
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=np.uint8)
        ends = np.cumsum(lens)
        # Index of byte j = starts[token(j)] + (j - first byte of token(j) in the output).
        shift = np.repeat(self.starts[ids] - (ends - lens), lens)
        return self.flat[np.arange(total, dtype=np.int64) + shift]


def gpt2_byte_alphabet() -> dict[str, int]:
    """The GPT-2 byte-level alphabet inverted: printable character -> byte value.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to
    code points 256, 257, ... in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    shifted = 256
    for b in range(256):
        if b not in printable:
            table[chr(shifted)] = b
            shifted += 1
    return table


def _decoder_kinds(decoder_state: dict | None) -> set[str]:
    """Decoder types found in a (possibly nested Sequence) decoder description."""
    if not decoder_state:
        return set()
    kinds = {decoder_state.get("type", "")}
    for sub in decoder_state.get("decoders", []) or []:
        kinds |= _decoder_kinds(sub)
    if decoder_state.get("type") == "Replace" and decoder_state.get("content") == " ":
        kinds.add("ReplaceSpace")
    return kinds


def _token_to_bytes(token: str, kinds: set[str], alphabet: dict[str, int]) -> bytes:
    if "ByteLevel" in kinds:
        try:
            return bytes(alphabet[ch] for ch in token)
        except KeyError:
            return token.encode("utf-8")
    if "ByteFallback" in kinds or "Metaspace" in kinds or "ReplaceSpace" in kinds:
        m = _BYTE_FALLBACK.match(token)
        if m and "ByteFallback" in kinds:
            return bytes([int(m.group(1), 16)])
        return token.replace("▁", " ").encode("utf-8")
    if "WordPiece" in kinds:
        return (token[2:] if token.startswith("##") else token).encode("utf-8")
    return token.encode("utf-8")


def build_byte_table(tokenizer) -> TokenByteTable:
    """Build the byte table of a transformers fast tokenizer (uncached; see `byte_table`).

    Args:
        tokenizer: a `PreTrainedTokenizerFast` (or a subclass: Qwen2Tokenizer, LlamaTokenizer...).

    Returns:
        The table covering ids 0..len(tokenizer)-1.
    """
    backend = tokenizer.backend_tokenizer
    decoder = backend.decoder
    kinds = _decoder_kinds(json.loads(decoder.__getstate__()) if decoder is not None else None)
    alphabet = gpt2_byte_alphabet()
    vocab_size = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    special = np.zeros(vocab_size, dtype=bool)
    special_ids = set(tokenizer.all_special_ids)
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if i < vocab_size}
    special_ids |= {i for i, t in added.items() if t.special}
    pieces: list[bytes] = []
    for i, tok in enumerate(tokens):
        if i in special_ids or tok is None:
            special[i] = True
            pieces.append(b"")
        elif i in added:
            pieces.append(added[i].content.encode("utf-8"))
        else:
            pieces.append(_token_to_bytes(tok, kinds, alphabet))
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=vocab_size)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.frombuffer(b"".join(pieces), dtype=np.uint8).copy()
    return TokenByteTable(
        flat=flat,
        starts=starts,
        lengths=lengths,
        special=special,
        drops_whitespace="WordPiece" in kinds,
    )


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def byte_table(tokenizer) -> TokenByteTable:
    """Cached `build_byte_table`; rebuilt when tokens were added since the last call."""
    hit = _CACHE.get(tokenizer)
    if hit is not None and hit[0] == len(tokenizer):
        return hit[1]
    table = build_byte_table(tokenizer)
    _CACHE[tokenizer] = (len(tokenizer), table)
    return table
