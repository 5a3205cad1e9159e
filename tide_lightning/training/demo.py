"""``make demo``: a complete small TIDE distillation on CPU in a few minutes.

1. Two tokenizers of different kinds are trained on the corpus (the Python standard
   library's sources): a byte-level BPE for the student, a Unigram/metaspace one for the
   cross-pipeline teacher.
2. Two small Qwen3-MoE masked-diffusion teachers are pretrained with the ``ce`` variant,
   one per tokenizer.
3. A smaller BD3LM student is trained three ways for the same steps: ``ce`` only,
   ``tide_shared`` (TIDAL + CompDemo against the BPE teacher) and ``tide_cross`` (Reverse
   CALM against the Unigram teacher).
4. Every student is validated on held-out files with the same masks: NELBO, token KL to
   the BPE teacher and chunk KL to the Unigram teacher; a table is printed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tide_lightning.config import RunConfig, TokenizerConfig, load_config
from tide_lightning.training.run import fit, validate

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "demo.yaml"


def _replace(config: RunConfig, **groups) -> RunConfig:
    """Copy ``config`` with some groups' fields replaced: ``student={"arch": ...}``."""
    changes = {}
    for name, value in groups.items():
        current = getattr(config, name)
        changes[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
    return dataclasses.replace(config, **changes)


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run_demo(
    out: str = "runs/demo", steps: int | None = None, config_path: Path = DEMO_CONFIG
) -> dict:
    """Run the whole demo; returns ``{student: {metric: value}}`` and prints the table."""
    started = time.perf_counter()
    out_dir = Path(out)
    base = load_config(config_path, [f"run_dir={out_dir}"])
    if steps is not None:
        base = _replace(base, trainer={"max_steps": steps, "val_check_interval": steps})
    bpe_dir, unigram_dir = out_dir / "tokenizers" / "bpe", out_dir / "tokenizers" / "unigram"
    bpe = dataclasses.replace(base.student.tokenizer, source="bpe")
    unigram = dataclasses.replace(base.teacher.tokenizer, source="unigram")

    teacher_sizes = {"arch": "tiny_moe", "hidden_size": 64, "num_experts": 4}
    teachers = {}
    for name, tokenizer, cache in (("bpe", bpe, bpe_dir), ("unigram", unigram, unigram_dir)):
        _banner(f"pretraining the {name} MoE teacher (ce)")
        config = _replace(
            base,
            run_dir=str(out_dir / f"teacher_{name}"),
            student={**teacher_sizes, "tokenizer": tokenizer},
            objective={"variant": "ce"},
            teacher=None,
        )
        run = fit(config)
        tokenizer_dir = Path(config.run_dir) / "student_tokenizer"
        teachers[name] = out_dir / "teachers" / name
        run.module.student.save_pretrained(teachers[name], run.student_tokenizer)
        cache.parent.mkdir(parents=True, exist_ok=True)
        if not cache.exists():
            tokenizer_dir.replace(cache)

    student_tok = TokenizerConfig(source=str(bpe_dir))
    shared_teacher = {"kind": "tiny_moe", "path": str(teachers["bpe"]), "tokenizer": None}
    cross_teacher = {"kind": "tiny_moe", "path": str(teachers["unigram"]), "tokenizer": None}

    def student_config(name: str, pipeline: str, variant: str, teacher: dict, **trainer):
        return _replace(
            base,
            run_dir=str(out_dir / f"student_{name}"),
            pipeline=pipeline,
            student={"tokenizer": student_tok},
            teacher=dataclasses.replace(base.teacher, **teacher),
            objective={"variant": variant},
            trainer=trainer,
        )

    students = {
        "ce": ("shared", "ce", shared_teacher),
        "tide_shared": ("shared", "tide_shared", shared_teacher),
        "tide_cross": ("cross", "tide_cross", cross_teacher),
    }
    checkpoints = {}
    for name, (pipeline, variant, teacher) in students.items():
        _banner(f"training the {name} student")
        config = student_config(name, pipeline, variant, teacher)
        fit(config)
        checkpoints[name] = Path(config.run_dir) / "checkpoints" / "last.ckpt"

    _banner("validating the three students against both teachers")
    # Token KL to the BPE teacher (variant kl) and chunk KL to the Unigram teacher
    # (tide_cross), on the same held-out files and fixed masks for every student.
    probes = (("shared", "kl", shared_teacher), ("cross", "tide_cross", cross_teacher))
    table = {}
    for name, ckpt in checkpoints.items():
        row = {}
        for pipeline, variant, teacher in probes:
            config = student_config(name, pipeline, variant, teacher, enable_progress_bar=False)
            # Each probe is a TensorBoard run of its own (tensorboard/validate_<probe>),
            # at the checkpoint's step: the training curves keep their history.
            metrics = validate(config, str(ckpt), name=f"validate_{variant}")[0]
            if pipeline == "cross":  # NELBO is the shared pipeline's (plain masks)
                metrics.pop("val/ce", None)
            row.update(metrics)
        table[name] = row
    _print_table(table, out_dir, time.perf_counter() - started)
    return table


def _print_table(table: dict, out_dir: Path, seconds: float) -> None:
    print(f"\nDemo finished in {seconds / 60:.1f} min. Validation on held-out stdlib files:\n")
    print("| student     | NELBO (val/ce) | KL to BPE teacher | chunk KL to Unigram teacher |")
    print("|---|---|---|---|")
    for name, row in table.items():
        print(
            f"| {name:<11} | {row.get('val/ce', float('nan')):14.3f} | "
            f"{row.get('val/kl_to_teacher', float('nan')):17.3f} | "
            f"{row.get('val/chunk_kl', float('nan')):27.3f} |"
        )
    print(f"\nTensorBoard: .venv/bin/tensorboard --logdir {out_dir}")
