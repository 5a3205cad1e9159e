"""Model tools on the command line: ``sample``, ``evaluate``, ``bench`` and ``export``.

Importing this module registers the four subcommands with :mod:`tide_lightning.cli`.
Each command is a thin wrapper: argument parsing here, the work in
:mod:`tide_lightning.sampling`, :mod:`tide_lightning.evaluation`,
:mod:`tide_lightning.bench` and :mod:`tide_lightning.export`. ``--model`` accepts an
exported Hugging Face directory or a training checkpoint (file, DeepSpeed or FSDP
directory; the tokenizer is found in its run directory).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tide_lightning.cli import command
from tide_lightning.sampling import PREFIX_MODES, REMASKING, generate, trim_at_eos

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
        **sampling: :func:`tide_lightning.sampling.generate` options.

    Returns:
        ``generate_fn(prompts, max_new_tokens=None) -> completions`` (text before the first
        EOS); ``max_new_tokens`` overrides the sampling option for one call.
    """
    device = next(student.parameters()).device
    generator = None if seed is None else torch.Generator(device).manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id

    def generate_fn(prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        options = (
            sampling if max_new_tokens is None else {**sampling, "max_new_tokens": max_new_tokens}
        )
        completions = []
        for start in range(0, len(prompts), batch_size):
            ids = [render_prompt(tokenizer, p, chat) for p in prompts[start : start + batch_size]]
            out = generate(
                student, ids, eos_id=eos, pad_id=pad or 0, generator=generator, **options
            )
            completions += tokenizer.batch_decode(
                trim_at_eos(out.tokens, eos), skip_special_tokens=True
            )
        return completions

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


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported HF directory or training ckpt")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (checkpoints only)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    _model_args(parser)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=None, help="default: as trained")
    parser.add_argument("--steps-per-block", type=int, default=None, help="default: block size")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--remasking", choices=REMASKING, default="low_confidence")
    parser.add_argument("--threshold", type=float, default=None, help="parallel decoding tau")
    parser.add_argument(
        "--prefix", choices=PREFIX_MODES, default="cached",
        help="cached (default), or re-encoded per_block (published) / per_step, to compare",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)


def _load(args: argparse.Namespace):
    from tide_lightning.export import load_any

    dtype = DTYPES[args.dtype] if args.dtype else None
    return load_any(args.model, dtype, tokenizer_dir=args.tokenizer, device=args.device)


def _sampling_options(args: argparse.Namespace, block_size: int) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        block_size=args.block_size or block_size,
        steps_per_block=args.steps_per_block,
        temperature=args.temperature,
        remasking=args.remasking,
        threshold=args.threshold,
        prefix=args.prefix,
    )


def _sample_args(parser: argparse.ArgumentParser) -> None:
    _sampling_args(parser)
    parser.add_argument("prompts", nargs="*", help="prompts (or use --file)")
    parser.add_argument("--file", default=None, help="a text file with one prompt per line")
    parser.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    parser.add_argument("--show-order", action="store_true", help="print the denoising order")


@command("sample", "print the student's completions of prompts", _sample_args)
def sample_command(args: argparse.Namespace) -> None:
    prompts = list(args.prompts)
    if args.file:
        text = Path(args.file).read_text(encoding="utf-8")
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("error: give prompts on the command line or with --file")
    loaded = _load(args)
    tok = loaded.tokenizer
    options = _sampling_options(args, loaded.block_size)
    device = next(loaded.student.parameters()).device
    generator = torch.Generator(device).manual_seed(args.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(prompts), args.batch_size):
        batch = prompts[start : start + args.batch_size]
        ids = [render_prompt(tok, p, not args.no_chat) for p in batch]
        out = generate(
            loaded.student, ids, eos_id=tok.eos_token_id, pad_id=pad or 0, generator=generator,
            **options,
        )  # fmt: skip
        texts = tok.batch_decode(
            trim_at_eos(out.tokens, tok.eos_token_id), skip_special_tokens=True
        )
        for row, (prompt, text) in enumerate(zip(batch, texts, strict=True)):
            print(f"### prompt {start + row}: {prompt}\n{text}")
            if args.show_order:
                steps = int(out.steps[row])
                print(f"--- denoising order ({steps} steps)")
                print(format_order(tok, out.tokens[row].tolist(), out.order[row].tolist()))
            print()


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    _sampling_args(parser)
    parser.add_argument(
        "--tasks", nargs="+", default=["humaneval"], help="humaneval,mbpp,gsm8k (commas or spaces)"
    )
    parser.add_argument("--data", nargs="*", default=[], help="TASK=PATH local data files")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each task")
    parser.add_argument("--out", default="runs/eval", help="records and summary go here")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")


@command("evaluate", "generate and score HumanEval / MBPP / GSM8K offline", _evaluate_args)
def evaluate_command(args: argparse.Namespace) -> None:
    from tide_lightning.evaluation import build_tasks, evaluate, format_summary

    data = dict(item.split("=", 1) for item in args.data)
    loaded = _load(args)
    # The tasks render their prompts in the tokenizer's chat template themselves.
    names = [name for item in args.tasks for name in item.split(",") if name]
    tasks = build_tasks(names, data, args.limit, args.timeout, tokenizer=loaded.tokenizer)
    generate_fn = text_generate_fn(
        loaded.student, loaded.tokenizer, chat=False, batch_size=args.batch_size,
        seed=args.seed, **_sampling_options(args, loaded.block_size),
    )  # fmt: skip
    summary = evaluate(generate_fn, tasks, args.out, batch_size=args.batch_size)
    print(format_summary(summary), end="")


def _bench_args(parser: argparse.ArgumentParser) -> None:
    _model_args(parser)
    parser.add_argument("--ar-model", default=None, help="AR model dir (default: same size)")
    parser.add_argument(
        "--prompt", default="Write a Python function that returns the n-th Fibonacci number."
    )
    parser.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=None, help="default: as trained")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ignore-eos", action="store_true", help="always generate all tokens")
    parser.add_argument(
        "--prefix-baselines", nargs="*", choices=PREFIX_MODES[1:], default=[],
        help="add sampler rows with the prefix re-encoded per_block (published) / per_step",
    )  # fmt: skip


@command("bench", "tokens/s and peak memory: sampler (1 token/step, threshold) vs AR", _bench_args)
def bench_command(args: argparse.Namespace) -> None:
    from tide_lightning.bench import AR_MODE, ar_baseline_like, bench_runs, format_table, measure

    loaded = _load(args)
    tok = loaded.tokenizer
    device = next(loaded.student.parameters()).device
    prompt = render_prompt(tok, args.prompt, not args.no_chat)
    ar_prompt, ar_eos = None, None
    if args.ar_model:
        ar, ar_tok = _load_autoregressive(args.ar_model, loaded.student)
        if ar_tok is not None:
            ar_prompt = render_prompt(ar_tok, args.prompt, not args.no_chat)
            ar_eos = ar_tok.eos_token_id
    else:
        ar = ar_baseline_like(loaded.student)
    eos = None if args.ignore_eos else tok.eos_token_id
    runs = bench_runs(
        loaded.student, ar, prompt, args.new_tokens, args.block_size or loaded.block_size,
        args.threshold, eos, tok.pad_token_id or 0, args.prefix_baselines,
        ar_prompt, None if args.ignore_eos else ar_eos,
    )  # fmt: skip
    results = measure(runs, device, args.warmup, args.repeats)
    print(f"device {device}, batch 1, prompt {len(prompt)} tokens, {args.new_tokens} new tokens")
    print(format_table(results, AR_MODE), end="")


def _load_autoregressive(path: str, student):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parameter = next(student.parameters())
    model = AutoModelForCausalLM.from_pretrained(path, dtype=parameter.dtype, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return model.to(parameter.device).eval(), tokenizer


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="training checkpoint: .ckpt file or DeepSpeed/FSDP directory")
    parser.add_argument("out_dir", help="the Hugging Face directory to write")
    parser.add_argument("--tokenizer", default=None, help="default: <run_dir>/student_tokenizer")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: as stored")


@command("export", "write a checkpoint's student as a Hugging Face directory", _export_args)
def export_command(args: argparse.Namespace) -> None:
    from tide_lightning.export import export_checkpoint, load_any

    dtype = DTYPES[args.dtype] if args.dtype else None
    out = export_checkpoint(args.ckpt, args.out_dir, args.tokenizer, dtype)
    loaded = load_any(out, dtype=dtype or torch.float32, device="cpu")  # it must load back
    params = sum(p.numel() for p in loaded.student.parameters())
    print(
        f"wrote {out} ({params:,} parameters, mask id {loaded.student.mask_token_id}, "
        f"block size {loaded.block_size})"
    )
