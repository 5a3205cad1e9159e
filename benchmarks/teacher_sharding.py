"""Per-rank teacher memory and forward time, ZeRO-3 sharded vs whole, in one 2-process run.

Usage::

    python benchmarks/teacher_sharding.py [--world 2] [--hidden 256] [--layers 4] [--iters 10]

Runs on CPU with gloo. Every rank builds the same Qwen3-MoE teacher (fixed seed),
times its unsharded forward, then shards it with ZeRO-3 and times the sharded one on
the same input. Rank 0 prints per-rank parameter bytes and median forward times.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _median_seconds(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if dist.is_initialized():
            dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(args.world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(max(1, args.threads))
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    from tide_lightning.models import build_tiny_moe_teacher, setup_teacher
    from tide_lightning.models.sharding import local_parameter_bytes

    def build():
        return build_tiny_moe_teacher(
            args.vocab, args.vocab - 1, hidden_size=args.hidden, num_layers=args.layers,
            num_heads=8, num_kv_heads=4, num_experts=8, experts_per_token=2,
            moe_intermediate_size=args.hidden, seed=0,
        )  # fmt: skip

    g = torch.Generator().manual_seed(rank)
    x = torch.randint(0, args.vocab - 1, (args.batch, args.length), generator=g)
    selected = torch.rand(args.batch, args.length, generator=g) < 0.5

    whole = build()
    whole_bytes = local_parameter_bytes(whole)
    whole_s = _median_seconds(lambda: whole.logits(x, selected), args.iters)
    reference = whole.logits(x, selected)

    sharded = setup_teacher(build(), sharding="deepspeed", guard_timeout_s=120)
    sharded_bytes = sharded.local_parameter_bytes()
    sharded_s = _median_seconds(lambda: sharded.logits(x, selected), args.iters)
    err = (sharded.logits(x, selected) - reference).abs().max().item()

    row = {
        "rank": rank,
        "params": sum(p.numel() for p in whole.parameters()),
        "whole_bytes": whole_bytes,
        "sharded_bytes": sharded_bytes,
        "whole_forward_s": whole_s,
        "sharded_forward_s": sharded_s,
        "max_abs_diff": err,
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(row, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(args, port, out), nprocs=args.world, join=True)
        rows = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(args.world)]
    print(f"teacher: Qwen3-MoE, {rows[0]['params']:,} parameters (fp32), world {args.world}, "
          f"input {args.batch}x{args.length}, {args.threads} thread(s)/rank, median of {args.iters}")  # fmt: skip
    print("rank | whole MB | sharded MB | ratio | whole fwd ms | sharded fwd ms | max |diff|")
    for r in rows:
        print(
            f"{r['rank']:4d} | {r['whole_bytes'] / 2**20:8.2f} | {r['sharded_bytes'] / 2**20:10.2f}"
            f" | {r['sharded_bytes'] / r['whole_bytes']:5.3f} | {r['whole_forward_s'] * 1e3:12.1f}"
            f" | {r['sharded_forward_s'] * 1e3:14.1f} | {r['max_abs_diff']:.1e}"
        )


if __name__ == "__main__":
    main()
