"""Prompt formats: the Qwen3 chat template (thinking disabled) and the task instructions.

The student shares Qwen3's tokenizer, so instruct prompts are rendered in Qwen3's
chat format with an empty think block, which is exactly what Qwen3's own template
renders with ``enable_thinking=False`` (a test checks it against the real template).
Rendering by hand keeps the evaluation free of a tokenizer dependency; pass a
tokenizer to :func:`chat_prompt` to use its own template instead.
"""

from __future__ import annotations

from typing import Any

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, "
    "including the imports it needs, in a single ```python code block.\n\n"
    "```python\n{prompt}```"
)
MBPP_INSTRUCTION = (
    "You are an expert Python programmer, and here is your task: {text} "
    "Your code should pass these tests:\n\n{tests}\n\n"
    "Reply with the code in a single ```python code block."
)
GSM8K_INSTRUCTION = (
    "Solve the following math problem step by step. "
    "End your answer with a line of the form '#### <number>'.\n\n{question}"
)


ASSISTANT_HEADER = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages in Qwen3's chat format with thinking disabled.

    Args:
        messages: ``[{"role": ..., "content": ...}, ...]``.
        add_generation_prompt: end with an open assistant turn. When ``False`` and the
            last message is the assistant's, it is left open (a prefill to continue).

    Returns:
        The prompt text.
    """
    prefill = None
    if not add_generation_prompt and messages and messages[-1]["role"] == "assistant":
        messages, prefill = messages[:-1], messages[-1]["content"]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if prefill is not None:
        return text + ASSISTANT_HEADER + prefill
    return text + ASSISTANT_HEADER if add_generation_prompt else text


def chat_prompt(user: str, system: str | None = None, tokenizer: Any = None) -> str:
    """Render one user turn as a Qwen3 chat prompt ending where the assistant answers.

    Args:
        user: the user message.
        system: an optional system message.
        tokenizer: optional HF tokenizer; when given, its ``apply_chat_template`` renders
            the prompt (with ``enable_thinking=False``).

    Returns:
        The prompt text, ending with the assistant header and an empty think block.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    if tokenizer is not None:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    return render_chat(messages)
