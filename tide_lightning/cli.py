"""The tide command line (``python -m tide_lightning <command>``), thin over importable code.

Commands: ``fit``, ``validate``, ``print-config`` (configs: ``--config FILE`` plus dotted
``key=value`` overrides), and the model tools registered by other modules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tide_lightning.config import ConfigError, load_config, to_yaml

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args)`` as subcommand ``name``; ``add_args`` declares its arguments."""

    def register(fn):
        COMMANDS[name] = (help, add_args, fn)
        return fn

    return register


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (see conf/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_steps=10")


def _validate_args(parser: argparse.ArgumentParser) -> None:
    _config_args(parser)
    parser.add_argument("--ckpt", default=None, help="checkpoint (default: last in run_dir)")


@command("fit", "train the student (resumes from run_dir automatically)", _config_args)
def fit_command(args: argparse.Namespace) -> None:
    from tide_lightning.training import fit

    fit(load_config(args.config, args.overrides))


@command("validate", "validation metrics of the student", _validate_args)
def validate_command(args: argparse.Namespace) -> None:
    from tide_lightning.training import validate

    validate(load_config(args.config, args.overrides), args.ckpt)


@command("print-config", "print the resolved, validated config", _config_args)
def print_config_command(args: argparse.Namespace) -> None:
    print(to_yaml(load_config(args.config, args.overrides)), end="")


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where the demo writes its runs")
    parser.add_argument("--steps", type=int, default=None, help="training steps per student")


@command(
    "demo", "the main job on the embedded default: tiny models, bundled corpus, CPU", _demo_args
)
def demo_command(args: argparse.Namespace) -> None:
    from tide_lightning.demo import run_demo

    run_demo(args.out, args.steps)


def build_parser() -> argparse.ArgumentParser:
    import tide_lightning.tools  # noqa: F401  (registers sample, evaluate, bench, export)

    parser = argparse.ArgumentParser(prog="tide", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command][2](args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
