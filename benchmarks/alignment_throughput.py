"""Throughput of cross-tokenizer chunk alignment on real code and text, one CPU core.

Corpus: the Python standard library's own sources (code) and `pydoc_data/topics.py`
(mostly English prose), present on every machine. Tokenizers: Qwen3 (student) and
Mistral v1 SentencePiece (teacher stand-in), both offline.

Reports student tokens per second for (a) the two tokenizations alone, (b) the
alignment step alone (`align_token_ids` on given encodings), (c) the whole path
(`align_texts`: both tokenizations plus alignment), and the share of student tokens
covered by chunks. Each corpus is timed as whole files and as ~2,000-character
pieces (about one 512-token training row).

    python benchmarks/alignment_throughput.py [--max-bytes 1500000]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import sysconfig  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from tide_lightning.data.tokenization import (  # noqa: E402
    load_mistral_v1_tokenizer,
    load_qwen3_tokenizer,
)
from tide_lightning.method.alignment import align_texts, align_token_ids  # noqa: E402


def load_corpus(max_bytes: int) -> dict[str, list[str]]:
    """Stdlib code files (sorted, up to `max_bytes`) and the pydoc topics prose."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    code, total = [], 0
    for path in sorted(lib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        code.append(text)
        total += len(text.encode())
        if total >= max_bytes:
            break
    topics = lib / "pydoc_data" / "topics.py"
    prose = [topics.read_text(encoding="utf-8")[:max_bytes]] if topics.exists() else []
    return {"code": code, "text": prose}


def pieces(docs: list[str], size: int = 2000) -> list[str]:
    """Cut documents into pieces of about `size` characters, at line ends."""
    out = []
    for doc in docs:
        start = 0
        while start < len(doc):
            end = doc.find("\n", start + size)
            end = len(doc) if end < 0 else end + 1
            out.append(doc[start:end])
            start = end
    return out


def best_of(repeats: int, fn) -> float:
    """Shortest wall time of `repeats` calls (the machine may be shared)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(student, teacher, docs: list[str], repeats: int = 3) -> dict[str, float]:
    s_back, t_back = student.backend_tokenizer, teacher.backend_tokenizer
    encs = [(s_back.encode(d), t_back.encode(d)) for d in docs]
    t_tok = best_of(repeats, lambda: [(s_back.encode(d), t_back.encode(d)) for d in docs])
    n_student = sum(len(s.ids) for s, _ in encs)

    def align_all():
        return [
            align_token_ids(
                student, teacher, d, s.ids, t.ids, lambda s=s: s.offsets, lambda t=t: t.offsets
            )
            for d, (s, t) in zip(docs, encs, strict=True)
        ]

    rows = align_all()
    t_align = best_of(repeats, align_all)
    covered = sum(int((r[:, 1] - r[:, 0]).sum()) for r in rows)

    t_whole = best_of(repeats, lambda: [align_texts(student, teacher, d) for d in docs])
    return {
        "docs": len(docs),
        "student_tokens": n_student,
        "tokenize_tok_s": n_student / t_tok,
        "align_tok_s": n_student / t_align,
        "whole_tok_s": n_student / t_whole,
        "align_overhead": t_align / t_tok,
        "coverage": covered / max(n_student, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bytes", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    student = load_qwen3_tokenizer()
    teacher = load_mistral_v1_tokenizer(tempfile.mkdtemp())
    align_texts(student, teacher, "warm up the byte tables")
    corpus = load_corpus(args.max_bytes)
    print(
        f"{'corpus':<14}{'docs':>7}{'student tok':>13}{'tokenize/s':>12}"
        f"{'align/s':>12}{'whole/s':>12}{'align/tok':>11}{'coverage':>10}"
    )
    for name, docs in corpus.items():
        for label, split in (("files", docs), ("2k pieces", pieces(docs))):
            if not split:
                continue
            r = measure(student, teacher, split, args.repeats)
            print(
                f"{name + ' ' + label:<14}{r['docs']:>7}{r['student_tokens']:>13,}"
                f"{r['tokenize_tok_s']:>12,.0f}{r['align_tok_s']:>12,.0f}"
                f"{r['whole_tok_s']:>12,.0f}{r['align_overhead']:>10.1%}{r['coverage']:>10.2%}"
            )


if __name__ == "__main__":
    main()
