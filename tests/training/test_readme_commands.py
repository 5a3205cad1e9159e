"""Every ``python -m tide_lightning`` command of the README runs as written.

The commands are read from the README's ``bash`` blocks (continuation lines joined,
comments dropped) and run in order in a scratch folder that sees the repository's
``conf/``, ``tests/`` and ``examples/`` (so ``runs/`` lands there). By default every
command is parsed by the real CLI parser and the first fit, export and sample run (about a
minute on two loaded cores); the whole sequence, in README order, is the slow test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tide_lightning.cli import build_parser, check_overrides

ROOT = Path(__file__).resolve().parents[2]
PREFIX = ["python", "-m", "tide_lightning"]


def readme_commands() -> list[list[str]]:
    """The README's CLI commands, each as an argument list starting with ``python``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            args = shlex.split(line, comments=True)
            if args[:3] == PREFIX:
                commands.append(args)
    return commands


def _needs_lm_eval(args: list[str]) -> bool:
    return "--suite" in args


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TIDE_"))}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        [sys.executable, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("conf", "tests", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def test_readme_has_the_documented_commands_and_all_parse():
    commands = readme_commands()
    assert len(commands) >= 8
    parser = build_parser()
    for args in commands:
        parsed = parser.parse_args(args[3:])  # SystemExit on a literal "[--ar-model DIR]"
        if hasattr(parsed, "overrides"):
            check_overrides(parsed.overrides)
        for flag in ("--file", "--config"):
            if flag in args:
                assert (ROOT / args[args.index(flag) + 1]).is_file(), args


def test_readme_sampling_chain_runs(workdir):
    commands = readme_commands()
    start = next(i for i, a in enumerate(commands) if a[3] == "export") - 1
    chain = [a for a in commands[start:] if a[3] in ("fit", "export", "sample")][:3]
    assert [a[3] for a in chain] == ["fit", "export", "sample"]
    for args in chain:
        done = _run(args, workdir)
        assert done.returncode == 0, f"{shlex.join(args)}\n{(done.stdout + done.stderr)[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_readme_command_runs_in_order(workdir):
    try:
        import lm_eval.evaluator  # noqa: F401

        have_lm_eval = True
    except ImportError:
        have_lm_eval = False
    for args in readme_commands():
        if _needs_lm_eval(args) and not have_lm_eval:
            continue  # needs `make install-eval`
        done = _run(args, workdir)
        assert done.returncode == 0, f"{shlex.join(args)}\n{(done.stdout + done.stderr)[-3000:]}"
