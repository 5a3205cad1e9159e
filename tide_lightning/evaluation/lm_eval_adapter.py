"""lm-evaluation-harness model ``tide_bd3lm`` (optional: needs ``pip install lm-eval``).

Registering happens on :func:`register` (lm_eval is imported only then), so this
module imports without lm_eval. lm_eval discovers no plugins by itself, so run it
through this module, which registers the model first::

    python -m tide_lightning.evaluation.lm_eval_adapter run --model tide_bd3lm \\
        --model_args pretrained=DIR --tasks gsm8k --apply_chat_template

A block-diffusion model has no cheap left-to-right likelihood, so only
``generate_until`` is implemented: use generative task variants (e.g. ``gsm8k``,
``bbh_cot_zeroshot``, ``mmlu_pro``, ``minerva_math``). Stop sequences (``until``) are
applied to the completion after generation.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from tide_lightning.evaluation.prompts import render_chat

MODEL_NAME = "tide_bd3lm"


def cut_at_stops(text: str, until: Sequence[str] | str | None) -> str:
    """``text`` up to the earliest occurrence of any stop sequence.

    Args:
        text: the completion.
        until: a stop string, a list of them, or ``None``.

    Returns:
        The prefix before the first stop (the whole text if none occurs).
    """
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def load_generate_fn(pretrained: str, **kwargs: Any) -> Callable[..., list[str]]:
    """A ``generate_fn`` for a model directory, built by the project's sampler."""
    try:
        from tide_lightning.sampling import load_generate_fn as loader
    except ImportError as exc:
        raise ImportError(
            "tide_bd3lm needs the block-diffusion sampler (tide_lightning.sampling), "
            "which is not available in this installation"
        ) from exc
    return loader(pretrained, **kwargs)


@functools.lru_cache(maxsize=1)
def register() -> type:
    """Import lm_eval, register ``tide_bd3lm`` and return the model class."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    @register_model(MODEL_NAME)
    class TideBD3LM(LM):
        """lm_eval model wrapping a ``generate_fn(prompts) -> completions``.

        Args:
            pretrained: model directory, loaded by the sampler (ignored when
                ``generate_fn`` is given).
            generate_fn: use this instead of loading ``pretrained`` (tests, scripts).
            batch_size: prompts per ``generate_fn`` call.
            **sampler_kwargs: passed to the sampler's loader (steps, block size, ...).
        """

        def __init__(
            self,
            pretrained: str | None = None,
            generate_fn: Callable[..., list[str]] | None = None,
            batch_size: int | str = 1,
            device: str | None = None,
            **sampler_kwargs: Any,
        ) -> None:
            super().__init__()
            if generate_fn is None:
                if pretrained is None:
                    raise ValueError("tide_bd3lm needs model_args pretrained=DIR")
                if device is not None:
                    sampler_kwargs["device"] = device
                generate_fn = load_generate_fn(pretrained, **sampler_kwargs)
            self.generate_fn = generate_fn
            self.batch_size = max(1, int(batch_size)) if str(batch_size).isdigit() else 1
            params = inspect.signature(generate_fn).parameters
            self._takes_max_new_tokens = "max_new_tokens" in params

        @property
        def tokenizer_name(self) -> str:
            return "qwen3-no-thinking"

        def apply_chat_template(
            self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
        ) -> str:
            return render_chat(chat_history, add_generation_prompt)

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out: list[str | None] = [None] * len(requests)
            groups: dict[int | None, list[int]] = {}
            for i, request in enumerate(requests):
                groups.setdefault(request.args[1].get("max_gen_toks"), []).append(i)
            for max_tokens, indices in groups.items():
                extra = {}
                if self._takes_max_new_tokens and max_tokens is not None:
                    extra["max_new_tokens"] = int(max_tokens)
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    prompts = [requests[i].args[0] for i in chunk]
                    completions = self.generate_fn(prompts, **extra)
                    for i, text in zip(chunk, completions, strict=True):
                        out[i] = cut_at_stops(text, requests[i].args[1].get("until"))
            return [text or "" for text in out]

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list:
            raise NotImplementedError(
                "tide_bd3lm scores by generation only: use generative task variants"
            )

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list:
            raise NotImplementedError(
                "tide_bd3lm scores by generation only: use generative task variants"
            )

    return TideBD3LM


def main() -> None:
    """Register ``tide_bd3lm``, then hand the command line to lm_eval."""
    register()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
