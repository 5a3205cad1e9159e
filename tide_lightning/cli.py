"""The tide command line (``python -m tide_lightning <command>``), thin over importable code.

:data:`COMMANDS` is the whole CLI: one row per command, ``name -> (help, arguments, function)``.
Nothing registers itself by being imported, and this module imports neither torch nor the
package's heavy modules at the top, so ``--help`` answers at once; each command imports the
code it runs when it runs.

User errors (a bad config value, a missing file, a bad argument) end in one line,
``error: <what>``, and exit status 2; ``--debug`` (or ``TIDE_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from tide_lightning.errors import UserError

DTYPE_NAMES = ("bfloat16", "float16", "float32")
PREFIX_MODES = ("cached", "per_block", "per_step")  # as tide_lightning.generation.sampling
REMASKING = ("low_confidence", "random")  # as tide_lightning.generation.sampling


# --- arguments ---------------------------------------------------------------------------


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see conf/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. trainer.max_steps=10",
    )


def _validate_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--ckpt", default=None, help="checkpoint (default: last in run_dir)")


def _print_config_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument(
        "--comments", action="store_true", help="each field's one-line docstring as a comment"
    )


def _plan_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument(
        "--world-size", type=int, nargs="+", default=[1, 2, 4, 8], help="world sizes to plan"
    )
    parser.add_argument(
        "--gpus-per-node", type=int, default=None, help="default: the config's trainer.devices"
    )


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where the demo writes its runs")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per student (teachers: twice as many)"
    )


def _study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="base run config (conf/study.yaml)")
    parser.add_argument("--grid", default=None, help="variants, seeds (conf/study/grid.yaml)")
    parser.add_argument("--out", default="runs/study", help="where the study writes its runs")
    parser.add_argument("--teachers", default="runs/demo", help="the demo's teacher cache")
    parser.add_argument("--quick", action="store_true", help="the grid's quick setting (CI)")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported HF directory or training ckpt")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (checkpoints only)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: as stored")


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
        help="cached, or re-encoded per_block (published) / per_step, to compare",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)


def _sample_args(parser: argparse.ArgumentParser) -> None:
    _sampling_args(parser)
    parser.add_argument("prompts", nargs="*", help="prompts (or use --file)")
    parser.add_argument("--file", default=None, help="a text file with one prompt per line")
    parser.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    parser.add_argument("--show-order", action="store_true", help="print the denoising order")


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    _sampling_args(parser)
    parser.add_argument(
        "--tasks", nargs="+", default=None,
        help="humaneval,mbpp,gsm8k (commas or spaces; default humaneval)",
    )  # fmt: skip
    parser.add_argument("--data", nargs="*", default=[], help="TASK=PATH local data files")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each task")
    parser.add_argument("--out", default="runs/eval", help="records and summary go here")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    parser.add_argument(
        "--suite", choices=["paper"], default=None,
        help="paper: the eight published lm-eval tasks with their settings, paper table",
    )  # fmt: skip
    parser.add_argument(
        "--include-path", default=None, help="--suite: extra lm-eval task YAML folder"
    )


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


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="training checkpoint: .ckpt file or DeepSpeed/FSDP directory")
    parser.add_argument("out_dir", help="the Hugging Face directory to write")
    parser.add_argument("--tokenizer", default=None, help="default: <run_dir>/student_tokenizer")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: as stored")


# --- commands ----------------------------------------------------------------------------


def check_overrides(overrides: list[str]) -> None:
    """Every override must be ``key=value``: ``trainer.max_steps 5`` names the fix.

    Raises:
        UserError: an override without ``=``.
    """
    for index, item in enumerate(overrides):
        if "=" in item:
            continue
        following = overrides[index + 1] if index + 1 < len(overrides) else None
        hint = item if following is None or "=" in following else f"{item}={following}"
        if "=" not in hint:
            hint = f"{item}=VALUE"
        raise UserError(
            f"override {item!r} has no '=': write key=value with no spaces, e.g. {hint}"
        )


def _load_config(args: argparse.Namespace):
    from tide_lightning.config import load_config

    check_overrides(args.overrides)
    return load_config(args.config, args.overrides)


def fit_command(args: argparse.Namespace) -> None:
    from tide_lightning.training.run import fit

    fit(_load_config(args))


def validate_command(args: argparse.Namespace) -> None:
    from tide_lightning.training.run import validate

    validate(_load_config(args), args.ckpt)


def print_config_command(args: argparse.Namespace) -> None:
    from tide_lightning.config import to_yaml
    from tide_lightning.training.run import resolved

    # As fit would store it: run_dir placeholders filled in, paths absolute.
    print(to_yaml(resolved(_load_config(args)), comments=args.comments), end="")


def plan_command(args: argparse.Namespace) -> None:
    from tide_lightning.training.plan import load_plan_config, plan

    config = load_plan_config(args.config, args.overrides)
    print(plan(config, args.world_size, args.gpus_per_node), end="")


def demo_command(args: argparse.Namespace) -> None:
    from tide_lightning.training.demo import run_demo

    run_demo(args.out, args.steps)


def study_command(args: argparse.Namespace) -> None:
    from tide_lightning.training.study import run_study

    run_study(args.config, args.grid, args.out, args.teachers, args.quick)


def _load_model(args: argparse.Namespace):
    from tide_lightning.generation.export import load_any
    from tide_lightning.generation.text import DTYPES

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


def sample_command(args: argparse.Namespace) -> None:
    from pathlib import Path

    prompts = list(args.prompts)
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"--file {path}: no such file")
        prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UserError("give prompts on the command line or with --file")

    import torch

    from tide_lightning.generation.text import format_order, generate_texts

    loaded = _load_model(args)
    device = next(loaded.student.parameters()).device
    completions = generate_texts(
        loaded.student, loaded.tokenizer, prompts, chat=not args.no_chat,
        batch_size=args.batch_size, generator=torch.Generator(device).manual_seed(args.seed),
        **_sampling_options(args, loaded.block_size),
    )  # fmt: skip
    for index, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        print(f"### prompt {index}: {prompt}\n{completion.text}")
        if args.show_order:
            print(f"--- denoising order ({completion.steps} steps)")
            print(format_order(loaded.tokenizer, completion.tokens, completion.order))
        print()


def _task_data(items: list[str]) -> dict[str, str]:
    """``--data TASK=PATH ...`` as a dict."""
    data = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise UserError(f"--data expects TASK=PATH, got {item!r}")
        data[name] = path
    return data


def evaluate_command(args: argparse.Namespace) -> None:
    from tide_lightning.evaluation import build_tasks, evaluate, format_summary
    from tide_lightning.generation.text import text_generate_fn

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1 (items per task), got {args.limit}")
    if args.suite is not None:
        return _evaluate_suite(args)
    data = _task_data(args.data)
    names = [name for item in args.tasks or ["humaneval"] for name in item.split(",") if name]
    # Task names and data files are checked before the model loads (minutes for a 16B one).
    build_tasks(names, data, args.limit, args.timeout)
    loaded = _load_model(args)
    # The tasks render their prompts in the tokenizer's chat template themselves.
    tasks = build_tasks(names, data, args.limit, args.timeout, tokenizer=loaded.tokenizer)
    generate_fn = text_generate_fn(
        loaded.student, loaded.tokenizer, chat=False, batch_size=args.batch_size,
        seed=args.seed, **_sampling_options(args, loaded.block_size),
    )  # fmt: skip
    provenance = _evaluate_provenance(args, loaded, tasks, data)
    summary = evaluate(
        generate_fn, tasks, args.out, batch_size=args.batch_size, provenance=provenance
    )
    print(format_summary(summary), end="")
    print(f"records, summary and provenance: {args.out}")


def _evaluate_provenance(args: argparse.Namespace, loaded, tasks, data: dict) -> dict:
    """What produced an evaluation: model, sampler, task data, code version, date."""
    import datetime
    from pathlib import Path

    from tide_lightning.generation.export import code_version, model_provenance

    task_info = {}
    for task in tasks:
        path = data.get(task.name)
        info = {
            "data": str(Path(path).resolve()) if path else "bundled with its package",
            "items": len(task.samples),
            "limit": args.limit,
        }
        if args.limit is not None and len(task.samples) < args.limit:
            info["fewer_than_limit"] = f"the data holds only {len(task.samples)} items"
        task_info[task.name] = info
    sampler = _sampling_options(args, loaded.block_size)
    sampler |= {"seed": args.seed, "batch_size": args.batch_size, "dtype": args.dtype}
    return {
        "model": model_provenance(args.model),
        "sampler": sampler,
        "tasks": task_info,
        "code_version": code_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _evaluate_suite(args: argparse.Namespace) -> None:
    from tide_lightning.errors import UserError
    from tide_lightning.evaluation.paper_suite import (
        format_paper_table,
        lm_eval_runner,
        run_paper_suite,
        suite_model,
    )

    if args.tasks or args.data:
        raise UserError("--suite paper runs the published tasks: drop --tasks / --data")
    loaded = _load_model(args)
    make_lm = suite_model(loaded, batch_size=args.batch_size, seed=args.seed)
    rows = run_paper_suite(make_lm, args.out, args.limit, lm_eval_runner(args.include_path))
    print(format_paper_table(rows, args.limit), end="")


def bench_command(args: argparse.Namespace) -> None:
    from tide_lightning.generation.bench import (
        AR_MODE,
        ar_baseline_like,
        bench_runs,
        format_table,
        load_autoregressive,
        measure,
    )
    from tide_lightning.generation.text import render_prompt

    loaded = _load_model(args)
    tok = loaded.tokenizer
    device = next(loaded.student.parameters()).device
    prompt = render_prompt(tok, args.prompt, not args.no_chat)
    ar_prompt, ar_eos = None, None
    if args.ar_model:
        ar, ar_tok = load_autoregressive(args.ar_model, loaded.student)
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


def export_command(args: argparse.Namespace) -> None:
    import torch

    from tide_lightning.generation.export import export_checkpoint, load_any
    from tide_lightning.generation.text import DTYPES

    dtype = DTYPES[args.dtype] if args.dtype else None
    out = export_checkpoint(args.ckpt, args.out_dir, args.tokenizer, dtype)
    loaded = load_any(out, dtype=dtype or torch.float32, device="cpu")  # it must load back
    params = sum(p.numel() for p in loaded.student.parameters())
    print(
        f"wrote {out} ({params:,} parameters, mask id {loaded.student.mask_token_id}, "
        f"block size {loaded.block_size})"
    )


Command = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]
]

COMMANDS: dict[str, Command] = {
    "fit": ("train the student (resumes from run_dir automatically)", _config_args, fit_command),
    "validate": ("validation metrics of the student", _validate_args, validate_command),
    "print-config": (
        "print the resolved, validated config with effective values",
        _print_config_args,
        print_config_command,
    ),
    "plan": (
        "per-rank memory and teacher traffic from the configs, no weights (meta device)",
        _plan_args,
        plan_command,
    ),
    "demo": (
        "the main job on the embedded default: tiny models, bundled corpus, CPU",
        _demo_args,
        demo_command,
    ),
    "study": (
        "the demo's students and the paper's ablations over seeds, on CPU",
        _study_args,
        study_command,
    ),
    "sample": ("print the student's completions of prompts", _sample_args, sample_command),
    "evaluate": (
        "generate and score HumanEval / MBPP / GSM8K offline",
        _evaluate_args,
        evaluate_command,
    ),
    "bench": (
        "tokens/s and peak memory: sampler (1 token/step, threshold) vs AR",
        _bench_args,
        bench_command,
    ),
    "export": (
        "write a checkpoint's student as a Hugging Face directory",
        _export_args,
        export_command,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`, defaults shown in ``--help``."""
    parser = argparse.ArgumentParser(prog="tide", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: TIDE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        add_args(p)
    return parser


def _message(err: BaseException) -> str:
    """The user's one line; a dataloader worker's error arrives wrapped in its traceback."""
    text = str(err)
    if "Original Traceback" in text:  # torch re-raises "Caught X in DataLoader worker..."
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print ``error: ...`` and return 2."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("TIDE_DEBUG", "") not in ("", "0")
    try:
        if args.command != "print-config":  # the commands that load torch and models
            from tide_lightning.training.run import quiet_third_party

            quiet_third_party()
        COMMANDS[args.command][2](args)
    except (UserError, FileNotFoundError) as err:
        if debug:
            raise
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2
    return 0
