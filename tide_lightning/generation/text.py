"""Text in, text out: prompts rendered, decoded in batches by the sampler, trimmed at EOS.

The one generation loop of the project: the ``sample`` command, the offline evaluation
runner and the lm-eval adapter all go through :func:`generate_texts`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from tide_lightning.generation.sampling import generate, trim_at_eos

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def render_prompt(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of ``prompt``, in the chat template with thinking disabled when ``chat``."""
    if chat and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )
    return tokenizer.encode(prompt, add_special_tokens=False)


@dataclass(frozen=True)
class Completion:
    """One prompt's result: the text before the first EOS, with the raw decoding record."""

    text: str
    tokens: list[int]
    """Generated ids (all new positions, EOS and after included)."""
    order: list[int]
    """The step at which each generated position was committed (-1: not generated)."""
    steps: int
    """Denoising steps spent on this prompt."""


def generate_texts(
    student,
    tokenizer,
    prompts: Sequence[str],
    chat: bool = False,
    batch_size: int = 8,
    generator: torch.Generator | None = None,
    **sampling,
) -> Iterator[Completion]:
    """Decode ``prompts`` in batches of ``batch_size``, yielding one :class:`Completion` each.

    Args:
        student: the block-diffusion student.
        tokenizer: its tokenizer (``eos_token_id``, ``pad_token_id``).
        prompts: prompt texts.
        chat: render each prompt in the chat template (thinking disabled).
        batch_size: prompts decoded together.
        generator: random source of the sampler (Gumbel noise, random scores).
        **sampling: :func:`tide_lightning.generation.sampling.generate` options.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        ids = [render_prompt(tokenizer, p, chat) for p in prompts[start : start + batch_size]]
        out = generate(student, ids, eos_id=eos, pad_id=pad or 0, generator=generator, **sampling)
        texts = tokenizer.batch_decode(trim_at_eos(out.tokens, eos), skip_special_tokens=True)
        for row, text in enumerate(texts):
            yield Completion(
                text, out.tokens[row].tolist(), out.order[row].tolist(), int(out.steps[row])
            )


def text_generate_fn(
    student,
    tokenizer,
    chat: bool = False,
    batch_size: int = 8,
    seed: int | None = 0,
    **sampling,
) -> Callable[[list[str]], list[str]]:
    """Wrap the sampler as ``generate_fn(prompts) -> completions`` (the evaluation runner's API).

    Args:
        student: the block-diffusion student.
        tokenizer: its tokenizer (``eos_token_id``, ``pad_token_id``).
        chat: render each prompt in the chat template (thinking disabled).
        batch_size: prompts decoded together.
        seed: seed of the sampler's random source (Gumbel noise, random scores).
        **sampling: :func:`tide_lightning.generation.sampling.generate` options.

    Returns:
        ``generate_fn(prompts, max_new_tokens=None) -> completions`` (text before the first
        EOS); ``max_new_tokens`` overrides the sampling option for one call.
    """
    device = next(student.parameters()).device
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)

    def generate_fn(prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        options = (
            sampling if max_new_tokens is None else {**sampling, "max_new_tokens": max_new_tokens}
        )
        return [
            c.text
            for c in generate_texts(
                student, tokenizer, prompts, chat, batch_size, generator, **options
            )
        ]

    return generate_fn


def format_order(tokenizer, tokens: Sequence[int], order: Sequence[int]) -> str:
    """The denoising order: one line per step with the positions it committed and their text.

    Args:
        tokenizer: decodes single tokens.
        tokens: generated ids of one prompt.
        order: the step at which each position was committed (-1: not generated).

    Returns:
        Lines ``step   s: +pos 'text' ...`` (positions count from the first new token).
    """
    by_step: dict[int, list[str]] = {}
    for pos, (token, step) in enumerate(zip(tokens, order, strict=True)):
        if step >= 0:
            by_step.setdefault(step, []).append(f"+{pos} {tokenizer.decode([token])!r}")
    return "\n".join(f"step {s:4d}: " + "  ".join(by_step[s]) for s in sorted(by_step))
