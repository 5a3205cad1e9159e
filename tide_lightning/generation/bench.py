"""Generation speed and memory: the block-diffusion sampler against autoregressive decoding.

What is measured (batch 1): *useful* tokens per second, i.e. generated tokens before
the first EOS over wall time, after warm-up runs; on CUDA also the peak allocated
memory. The modes are run round-robin and each keeps its fastest repeat, because on
a shared machine the slow outliers are other people's work, not ours: interleaving
makes every mode see the same background load. The median repeat is reported too, as
a check that the fastest one is not a fluke.

The autoregressive baseline is Hugging Face ``generate`` (greedy, KV cache) on a
``Qwen3ForCausalLM``; without a given model, :func:`ar_baseline_like` builds one with
the student's width, depth and vocabulary, whose speed does not depend on its weights.
It runs under ``torch.inference_mode`` like the sampler: ``generate`` itself only
disables gradients, which on a small CPU model costs it about a tenth of its speed, a
handicap that has nothing to do with the decoding method. ``ar_no_grad=True`` adds a
row for ``generate`` exactly as it ships.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Qwen3Config, Qwen3ForCausalLM

from tide_lightning.generation.sampling import generate


@dataclass(frozen=True)
class Measurement:
    """The fastest repeat of one generation mode.

    Attributes:
        name: mode label.
        tokens: useful (pre-EOS) tokens generated in that repeat.
        seconds: its wall time.
        peak_memory_mb: peak CUDA memory allocated over all repeats, None on CPU.
        tokens_per_step: average tokens committed per denoising step (sampler only).
        median_seconds: wall time of the median repeat.
    """

    name: str
    tokens: int
    seconds: float
    peak_memory_mb: float | None = None
    tokens_per_step: float | None = None
    median_seconds: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


AR_MODE = "autoregressive (HF generate)"
AR_NO_GRAD_MODE = "autoregressive (HF generate, no_grad only)"
PREFIX_LABELS = {
    "per_block": "prefix re-encoded per block",
    "per_step": "prefix re-encoded per step",
}

# A run returns (useful tokens, tokens per step or None).
Run = Callable[[], tuple[int, float | None]]


def useful_tokens(tokens: Tensor, eos_id: int | None) -> int:
    """Generated tokens before each row's first EOS, summed (tokens: Long[B, N])."""
    if eos_id is None:
        return tokens.numel()
    is_eos = (tokens == eos_id).long()
    return int((is_eos.cumsum(-1) == 0).sum())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    runs: dict[str, Run], device: torch.device, warmup: int = 1, repeats: int = 3
) -> list[Measurement]:
    """Time each run ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Args:
        runs: mode name to a zero-argument function that generates once.
        device: where the models run (CUDA gets synchronisation and peak memory).
        warmup: untimed rounds.
        repeats: timed rounds.

    Returns:
        One :class:`Measurement` per mode (its fastest repeat), in ``runs`` order.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    best: dict[str, tuple[int, float, float | None]] = {}
    peaks: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            start = time.perf_counter()
            tokens, per_step = run()
            _sync(device)
            seconds = time.perf_counter() - start
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                peaks[name] = max(peaks.get(name, 0.0), peak)
            times[name].append(seconds)
            rate = tokens / seconds
            if name not in best or rate > best[name][0] / best[name][1]:
                best[name] = (tokens, seconds, per_step)
    return [
        Measurement(
            name, *best[name][:2], peaks.get(name), best[name][2], statistics.median(times[name])
        )
        for name in runs
    ]


def ar_baseline_like(student, seed: int = 0) -> Qwen3ForCausalLM:
    """A random ``Qwen3ForCausalLM`` with the student's sizes, dtype and device (eval mode)."""
    sizes = student.model.config.to_dict()
    for key in ("model_type", "architectures", "mask_token_id", "block_size", "dtype"):
        sizes.pop(key, None)
    torch.manual_seed(seed)
    parameter = next(student.parameters())
    model = Qwen3ForCausalLM(Qwen3Config(**sizes)).to(parameter.dtype).to(parameter.device)
    model.set_attn_implementation("sdpa")
    return model.eval()


def sampler_run(student, prompt: Sequence[int], eos_id: int | None, **sampling) -> Run:
    """One batch-1 sampler call as a :data:`Run` (``sampling``: :func:`generate` options)."""

    def run() -> tuple[int, float | None]:
        out = generate(student, [list(prompt)], eos_id=eos_id, **sampling)
        return useful_tokens(out.tokens, eos_id), out.tokens_per_step()

    return run


def autoregressive_run(
    model,
    prompt: Sequence[int],
    new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    inference_mode: bool = True,
) -> Run:
    """Greedy HF ``generate`` with KV cache, batch 1, as a :data:`Run`.

    ``inference_mode=False`` runs it as it ships (``generate`` only disables gradients).
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt)], device=device)

    @torch.inference_mode(inference_mode)
    def run() -> tuple[int, float | None]:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        return useful_tokens(out[:, ids.shape[1] :], eos_id), None

    return run


def bench_runs(
    student,
    ar_model,
    prompt: Sequence[int],
    new_tokens: int = 256,
    block_size: int = 32,
    threshold: float = 0.9,
    eos_id: int | None = None,
    pad_id: int = 0,
    prefix_baselines: Sequence[str] = (),
    ar_prompt: Sequence[int] | None = None,
    ar_eos_id: int | None = None,
    ar_no_grad: bool = False,
) -> dict[str, Run]:
    """The modes of ``bench``: sampler at one token per step and in threshold mode, and AR.

    Args:
        student: the block-diffusion student.
        ar_model: the autoregressive baseline.
        prompt: prompt token ids.
        new_tokens: tokens to generate.
        block_size: the sampler's ``Bk``.
        threshold: ``tau`` of the threshold mode.
        eos_id: stop id (None: always generate ``new_tokens``).
        pad_id: padding id.
        prefix_baselines: also time both sampler modes with these reference prefix
            modes of :func:`generate` (``"per_block"``: the published sampler's
            re-encoding at every block; ``"per_step"``: no cache at all).
        ar_prompt: the prompt in the AR model's tokenizer (default ``prompt``).
        ar_eos_id: the AR model's stop id (default ``eos_id``).
        ar_no_grad: also time ``generate`` as it ships (no_grad, not inference mode).

    Returns:
        Mode name to :data:`Run`.
    """
    common = dict(max_new_tokens=new_tokens, block_size=block_size, pad_id=pad_id)
    modes = {"1 token/step": dict(steps_per_block=block_size), f"threshold {threshold}": {}}
    modes[f"threshold {threshold}"]["threshold"] = threshold
    runs: dict[str, Run] = {}
    for label, options in modes.items():
        runs[f"bd3lm {label}"] = sampler_run(student, prompt, eos_id, **common, **options)
        for prefix in prefix_baselines:
            runs[f"bd3lm {label}, {PREFIX_LABELS[prefix]}"] = sampler_run(
                student, prompt, eos_id, prefix=prefix, **common, **options
            )
    ar_args = (
        ar_model,
        prompt if ar_prompt is None else ar_prompt,
        new_tokens,
        eos_id if ar_eos_id is None else ar_eos_id,
        pad_id,
    )
    runs[AR_MODE] = autoregressive_run(*ar_args)
    if ar_no_grad:
        runs[AR_NO_GRAD_MODE] = autoregressive_run(*ar_args, inference_mode=False)
    return runs


def format_table(measurements: Sequence[Measurement], baseline: str | None = None) -> str:
    """A Markdown table; ``baseline`` names the row the speed ratios are taken against."""
    reference = next((m for m in measurements if m.name == baseline), None)
    lines = [
        "| mode | tokens | seconds | tokens/s | vs AR | tokens/step | peak MiB | median s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        ratio = (
            f"{m.tokens_per_second / reference.tokens_per_second:.2f}"
            if reference and reference.tokens_per_second
            else "-"
        )
        per_step = "-" if m.tokens_per_step is None else f"{m.tokens_per_step:.2f}"
        memory = "n/a" if m.peak_memory_mb is None else f"{m.peak_memory_mb:.0f}"
        median = "-" if m.median_seconds is None else f"{m.median_seconds:.3f}"
        lines.append(
            f"| {m.name} | {m.tokens} | {m.seconds:.3f} | {m.tokens_per_second:.1f} | {ratio} "
            f"| {per_step} | {memory} | {median} |"
        )
    return "\n".join(lines) + "\n"


def load_autoregressive(path: str, student):
    """An AR baseline from a local HF directory, on the student's device and dtype.

    Returns:
        ``(model, tokenizer)``; the tokenizer is None when the directory has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parameter = next(student.parameters())
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=parameter.dtype, local_files_only=True, trust_remote_code=False
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError):
        tokenizer = None
    return model.to(parameter.device).eval(), tokenizer
