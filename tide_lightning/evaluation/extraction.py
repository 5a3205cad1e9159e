"""Pull the gradable part out of a model's free-form answer.

Code: models answer with a fenced block, several blocks, an unterminated block (the
generation budget ran out), or bare code. GSM8K: the paper's two readings, ``strict``
(the number after the last ``####``) and ``flexible`` (the last number anywhere).
"""

from __future__ import annotations

import re
from fractions import Fraction

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
_SPECIAL = re.compile(r"<\|(?:im_end|im_start|endoftext|mask)\|>")
_NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CODE_LANGS = {"", "python", "py", "python3"}


def clean_completion(text: str) -> str:
    """Drop think blocks and chat special tokens, and cut at the first end-of-turn.

    Args:
        text: the decoded completion.

    Returns:
        The answer text.
    """
    text = text.split("<|im_end|>")[0].split("<|endoftext|>")[0]
    return _SPECIAL.sub("", _THINK.sub("", text))


def extract_code(completion: str, entry_point: str | None = None) -> str:
    """The code in a completion.

    Fenced blocks in Python (or no language) are preferred; among several, the first
    that defines ``entry_point`` wins, else the first. An opening fence without a
    closing one runs to the end of the text. Without fences the whole answer is code.

    Args:
        completion: the model's answer.
        entry_point: name of the function the task asks for, if any.

    Returns:
        The code, without fences.
    """
    text = clean_completion(completion)
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in _CODE_LANGS]
    if not blocks:
        return text if "```" not in text else text.split("```")[0]
    if entry_point is not None:
        for body in blocks:
            if re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", body, re.M):
                return body
    return blocks[0]


def defines_function(code: str, name: str) -> bool:
    """Whether ``code`` has a top-level ``def name(``."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def parse_number(text: str) -> Fraction | None:
    """A number written with optional ``$``, thousands commas, sign and decimals.

    Args:
        text: e.g. ``"$1,234.50"``.

    Returns:
        The exact value, or ``None`` if ``text`` holds no number.
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    raw = match.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        return Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None


def gsm8k_reference(answer: str) -> Fraction:
    """The reference value of a GSM8K ``answer`` field (the number after ``####``)."""
    value = parse_number(answer.rsplit("####", 1)[-1])
    if value is None:
        raise ValueError(f"GSM8K answer without a final number: {answer[-80:]!r}")
    return value


def gsm8k_strict(completion: str) -> Fraction | None:
    """The number right after the last ``####`` of the completion, if any."""
    text = clean_completion(completion)
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    match = _NUMBER.match(tail)
    return parse_number(match.group(0)) if match else None


def gsm8k_flexible(completion: str) -> Fraction | None:
    """The last number anywhere in the completion, if any."""
    found = _NUMBER.findall(clean_completion(completion))
    return parse_number(found[-1]) if found else None
