"""Overhead of a full training step over the model work it contains (CPU, tiny models).

For the shared (tide_shared) and cross (tide_cross) pipelines: the time of
``distill_step`` + backward against the sum of the bare student forward + backward and
the teacher forwards it contains, replayed with the exact same inputs, in one run.
The difference is everything TIDE adds: masking, CompDemo splits and merge, chunk
bookkeeping, and the losses.

    python benchmarks/step_overhead.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tide_lightning.config import load_config
from tide_lightning.method.objective import distill_step
from tide_lightning.training.builders import build_run

CONF = Path(__file__).resolve().parents[1] / "conf"
SIZES = [
    "student.hidden_size=128", "student.num_layers=4", "student.intermediate_size=256",
    "teacher.hidden_size=128", "teacher.num_layers=4", "data.max_length=256",
    "data.teacher_max_length=384", "data.batch_size=8", "objective.block_size=32",
    "trainer.enable_progress_bar=false",
]  # fmt: skip


class Recorder:
    """Wraps a model method and records the arguments of every call."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name = owner, name
        self.original = getattr(owner, name)
        self.calls: list[tuple[tuple, dict]] = []

    def __enter__(self):
        def recording(*args, **kwargs):
            self.calls.append((args, kwargs))
            return self.original(*args, **kwargs)

        setattr(self.owner, self.name, recording)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.owner, self.name, self.original)


def measure(config_name: str, repeats: int, run_dir: str) -> tuple[float, float]:
    config = load_config(CONF / config_name, [*SIZES, f"run_dir={run_dir}"])
    run = build_run(config)
    run.datamodule.setup("fit")
    batch = next(iter(run.datamodule.train_dataloader()))
    run.datamodule.record_batch(batch)
    module = run.module
    module.setup("fit")
    student, teacher = module.student, module.teacher

    def full() -> None:
        gen = torch.Generator().manual_seed(0)
        out = distill_step(
            student, teacher, batch, module.objective, 0.5, gen, pipeline=module.pipeline
        )
        out.loss.backward()

    with Recorder(student, "forward_train") as s_calls, Recorder(teacher, "logits") as t_calls:
        full()

    def bare() -> None:
        for args, kwargs in s_calls.calls:
            student.forward_train(*args, **kwargs).float().logsumexp(-1).sum().backward()
        for args, kwargs in t_calls.calls:
            teacher.logits(*args, **kwargs)

    full_times, bare_times = [], []
    for _ in range(3):  # warm-up
        full(), bare()
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        for fn, times in ((full, full_times), (bare, bare_times)):
            student.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(full_times), statistics.median(bare_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--run-dir", default="/tmp/tide_step_overhead")
    args = parser.parse_args()
    print("pipeline  variant      full step (ms)  student fwd+bwd + teacher fwd (ms)  overhead")
    for config, variant in (("tiny.yaml", "tide_shared"), ("tiny_cross.yaml", "tide_cross")):
        full, bare = measure(config, args.repeats, f"{args.run_dir}/{variant}")
        print(
            f"{config.split('.')[0]:<9} {variant:<12} {full * 1e3:>14.1f}  {bare * 1e3:>34.1f}  "
            f"{100 * (full / bare - 1):>7.1f}%"
        )


if __name__ == "__main__":
    main()
