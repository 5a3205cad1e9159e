"""Data throughput per dataloader worker, shared and cross pipelines (tokens/s).

Corpus: the Python standard library's own source files (code, one document per
file, packed into rows for the shared pipeline) plus a generated chat JSONL.
Tokenizers: a byte-level BPE (student) and a Unigram/metaspace one (teacher),
trained here in a second. One worker process (num_workers=1) so the figure is per
worker; the first batch (worker start, file indexing) is excluded.

Usage: python benchmarks/data_throughput.py [--batches 40] [--max-length 512]
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import tempfile
import time
from pathlib import Path

from tide_lightning.data import DistillDataModule, SourceSpec
from tide_lightning.data.tokenization import train_byte_level_bpe, train_unigram_metaspace


def _corpus(tmp: Path) -> tuple[list[SourceSpec], list[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sample = [p.read_text(errors="ignore") for p in sorted(stdlib.glob("*.py"))[:60]]
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"Explain line {i} of this code:\n{s[:300]}"},
                {"role": "assistant", "content": s[300:1200]},
            ]
        }
        for i, s in enumerate(sample * 4)
        if len(s) > 1300
    ]
    with open(tmp / "chat.jsonl", "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in chats)
    specs = [
        SourceSpec("code", str(stdlib), weight=1.0, suffixes=(".py",)),
        SourceSpec("jsonl", str(tmp / "chat.jsonl"), weight=1.0),
    ]
    return specs, sample


def measure(pipeline: str, specs, student, teacher, args) -> tuple[float, float]:
    dm = DistillDataModule(
        specs, student, teacher_tokenizer=teacher if pipeline == "cross" else None,
        pipeline=pipeline, max_length=args.max_length, teacher_max_length=2 * args.max_length,
        block_size=32, batch_size=args.batch_size, num_workers=1, seed=0,
    )  # fmt: skip
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    t0, tokens, real = time.perf_counter(), 0, 0
    for _ in range(args.batches):
        b = next(it)
        tokens += int(b["attention_mask"].sum())
        if "teacher_attention_mask" in b:
            real += int(b["teacher_attention_mask"].sum())
    dt = time.perf_counter() - t0
    return tokens / dt, real / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        specs, sample = _corpus(Path(tmp))
        student = train_byte_level_bpe(sample, vocab_size=2048)
        teacher = train_unigram_metaspace(sample, vocab_size=1500)
        print(f"student BPE {len(student)} tokens, teacher Unigram {len(teacher)} tokens")
        print(f"batch {args.batch_size} x L={args.max_length}, {args.batches} batches, 1 worker")
        for pipeline in ("shared", "cross"):
            s, t = measure(pipeline, specs, student, teacher, args)
            extra = f", teacher {t:,.0f} tokens/s" if pipeline == "cross" else ""
            print(f"{pipeline:6s}: student {s:,.0f} tokens/s per worker{extra}")


if __name__ == "__main__":
    main()
