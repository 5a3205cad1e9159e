"""The demo's corpus: small generated Python functions with strong local structure.

Why not real code: on the Python standard library (BPE-512, 128-token rows) a 75 K-parameter
student, a 140 K or a 528 K MoE teacher, and a plain PyTorch masked-LM loop all stay at the
unigram entropy for the first few hundred steps; a document is one whole file, so
consecutive batches come from the same module and the model chases it. No model a demo can
afford on a CPU learns more than the unigram there, so no teacher knows more than its
student. These programs are short (one function and its call), built from a small grammar,
and mix three kinds of difficulty that small models learn at different speeds:

- syntax (``def``, ``(``, ``):``, indentation, ``for i in range(``): learned in ~100 steps;
- copies: argument and variable names reused inside the body, the function's name reused in
  the call: learned later, by attention, which is what a longer-trained teacher knows better;
- irreducible choices (which name, which digit): no model predicts them.

The corpus is a pure function of the seed and the counts, so the teachers' cache key (the
files' hash) is stable across machines and Python versions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = [
    "total",
    "count",
    "value",
    "item",
    "result",
    "index",
    "left",
    "right",
    "size",
    "data",
    "key",
    "node",
    "width",
    "height",
    "offset",
    "limit",
    "score",
    "price",
    "speed",
    "delta",
    "start",
    "stop",
    "step",
    "acc",
]
VERBS = [
    "compute",
    "update",
    "scale",
    "merge",
    "clip",
    "count",
    "sum",
    "find",
    "check",
    "apply",
    "build",
    "shift",
]
NOUNS = [
    "rows",
    "items",
    "price",
    "score",
    "path",
    "grid",
    "bytes",
    "nodes",
    "range",
    "total",
    "weights",
    "queue",
]
OPS = ("+", "-", "*", "//", "%")


def _fresh(rng: random.Random, known: list[str]) -> str:
    unused = [n for n in NAMES if n not in known]
    return rng.choice(unused or NAMES)


def program(rng: random.Random) -> str:
    """One generated function and a call to it, as source text ending in a newline."""
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    args = rng.sample(NAMES, rng.randint(1, 3))
    known = list(args)
    lines = [f"def {name}({', '.join(args)}):"]
    for _ in range(rng.randint(2, 5)):
        kind, var = rng.random(), rng.choice(known)
        if kind < 0.5:
            new = _fresh(rng, known)
            rhs = rng.choice(known) if rng.random() < 0.5 else str(rng.randint(1, 9))
            lines.append(f"    {new} = {var} {rng.choice(OPS)} {rhs}")
            known.append(new)
        elif kind < 0.75:
            lines.append(f"    if {var} > {rng.randint(0, 9)}:")
            lines.append(f"        {var} = {var} {rng.choice(OPS)} {rng.randint(1, 9)}")
        else:
            new = _fresh(rng, known)
            lines += [f"    {new} = 0", f"    for i in range({var}):", f"        {new} = {new} + i"]
            known.append(new)
    lines.append(f"    return {rng.choice(known[len(args) :] or known)}")
    call = ", ".join(str(rng.randint(0, 9)) for _ in args)
    lines += ["", f"print({name}({call}))"]
    return "\n".join(lines) + "\n"


def write_corpus(
    directory: str | Path, train_docs: int = 8000, val_docs: int = 400, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``val.jsonl`` (``{"text": ...}`` per line) into ``directory``.

    The two splits come from different seeds, so no validation program is drawn from the
    training stream. Files that already hold the same bytes are left untouched (their
    timestamps too).

    Returns:
        The paths of the training and validation files.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, count, split_seed in (("train", train_docs, seed), ("val", val_docs, seed + 1)):
        rng = random.Random(split_seed)
        text = "".join(json.dumps({"text": program(rng)}) + "\n" for _ in range(count))
        path = directory / f"{split}.jsonl"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]
