"""lm-evaluation-harness model ``tide_bd3lm`` (optional: needs ``pip install lm-eval``).

Registering happens on :func:`register` (lm_eval is imported only then), so this
module imports without lm_eval. lm_eval discovers no plugins by itself, so run it
through this module, which registers the model first::

    python -m tide_lightning.evaluation.lm_eval_adapter --model tide_bd3lm \\
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


def load_generate_fn(
    pretrained: str,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    chat: bool = False,
    **sampling: Any,
) -> Callable[..., list[str]]:
    """A ``generate_fn(prompts, max_new_tokens=None)`` for a model directory or checkpoint.

    Args:
        pretrained: exported directory or training checkpoint (as ``--model`` takes).
        device: where the model runs (default CUDA when available).
        dtype: ``float32`` / ``bfloat16`` / ``float16`` (default bf16 on CUDA).
        batch_size: prompts decoded together.
        chat: render prompts in the chat template here; leave False when lm_eval renders
            them (``--apply_chat_template``) or the task wants raw text.
        **sampling: :func:`tide_lightning.generation.sampling.generate` options (``steps_per_block``,
            ``threshold``, ``temperature``, ...); the block size defaults to the trained one.

    Raises:
        ValueError: an option the sampler does not have, or an unknown dtype.
    """
    from tide_lightning.generation.export import load_any
    from tide_lightning.generation.sampling import generate
    from tide_lightning.generation.text import DTYPES, text_generate_fn

    fixed = {"student", "prompts", "eos_id", "pad_id", "generator"}
    options = set(inspect.signature(generate).parameters) - fixed
    unknown = sorted(set(sampling) - options - {"seed"})
    if unknown:
        raise ValueError(
            f"unknown {MODEL_NAME} model_args {unknown}; sampler options: {sorted(options)}"
        )
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    loaded = load_any(pretrained, DTYPES.get(dtype), device=device)
    sampling.setdefault("block_size", loaded.block_size)
    return text_generate_fn(
        loaded.student, loaded.tokenizer, chat=chat, batch_size=batch_size, **sampling
    )


@functools.lru_cache(maxsize=1)
def register() -> type:
    """Import lm_eval, register ``tide_bd3lm`` and return the model class."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    @register_model(MODEL_NAME)
    class TideBD3LM(LM):
        """lm_eval model wrapping a ``generate_fn(prompts) -> completions``.

        Args:
            pretrained: exported directory or training checkpoint (ignored when
                ``generate_fn`` is given).
            generate_fn: use this instead of loading ``pretrained`` (tests, scripts).
            batch_size: prompts per ``generate_fn`` call.
            device: where the model runs.
            max_batch_size: lm_eval passes it; unused.
            **sampler_kwargs: :func:`load_generate_fn` options (``dtype``, ``chat``,
                ``steps_per_block``, ``threshold``, ...).
        """

        def __init__(
            self,
            pretrained: str | None = None,
            generate_fn: Callable[..., list[str]] | None = None,
            batch_size: int | str = 1,
            device: str | None = None,
            max_batch_size: int | None = None,
            **sampler_kwargs: Any,
        ) -> None:
            super().__init__()
            # "auto" (lm_eval's batch-size search) has no meaning here: one prompt at a time.
            self.batch_size = max(1, int(batch_size)) if str(batch_size).isdigit() else 1
            if generate_fn is None:
                if pretrained is None:
                    raise ValueError("tide_bd3lm needs model_args pretrained=DIR")
                generate_fn = load_generate_fn(
                    pretrained, device=device, batch_size=self.batch_size, **sampler_kwargs
                )
            self.generate_fn = generate_fn
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


INSTALL_HINT = "make install-eval (or: pip install 'lm-eval>=0.4.8,<0.5' with its dependencies)"


def main() -> None:
    """Register ``tide_bd3lm``, then hand the command line to lm_eval."""
    try:  # what an evaluation imports (datasets, dill, ...), before any model loads
        import lm_eval.evaluator  # noqa: F401
        import lm_eval.tasks  # noqa: F401
    except ModuleNotFoundError as err:
        missing = f"error: lm-eval cannot run, {err.name!r} is missing: run {INSTALL_HINT}"
        raise SystemExit(missing) from None
    register()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
