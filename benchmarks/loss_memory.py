"""Peak extra memory, time and accuracy of the row-chunked losses against naive autograd.

Forward + backward of ``tidal_loss`` and ``forward_kl_loss`` at N masked positions over
a Qwen3-sized vocabulary. Each measurement runs in a fresh process so that the peak
resident memory (``ru_maxrss``) above the inputs is the loss's own; the accuracy check
runs both versions in this process. CPU only; prints one table.

    python benchmarks/loss_memory.py [--n 1024] [--vocab 151936]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from tide_lightning import forward_kl_loss, tidal_loss

TEMPERATURE = 2.0


def naive_tidal(s, z, lam):
    r = torch.softmax(((1 - lam[:, None]) * s + lam[:, None] * z) / TEMPERATURE, -1).detach()
    log_q = torch.log_softmax(s / TEMPERATURE, -1)
    kl = (torch.xlogy(r, r) - r * log_q).sum(-1)
    return TEMPERATURE**2 * kl.mean()


def naive_forward_kl(s, z, lam):
    log_q = F.log_softmax(s / TEMPERATURE, -1)
    log_p = F.log_softmax(z / TEMPERATURE, -1)
    return TEMPERATURE**2 * F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")


METHODS = {
    "tidal/chunked": lambda s, z, lam: tidal_loss(s, z, lam, TEMPERATURE),
    "tidal/naive": naive_tidal,
    "forward_kl/chunked": lambda s, z, lam: forward_kl_loss(s, z, TEMPERATURE),
    "forward_kl/naive": naive_forward_kl,
}


def inputs(n: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(n, vocab, generator=g) * 2).requires_grad_()
    z = torch.randn(n, vocab, generator=g) * 2
    lam = torch.rand(n, generator=g)
    return s, z, lam


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(method: str, n: int, vocab: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    s, z, lam = inputs(n, vocab)
    fn = METHODS[method]
    before = rss_bytes()
    fn(s, z, lam).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeats):
        s.grad = None
        start = time.perf_counter()
        fn(s, z, lam).backward()
        times.append(time.perf_counter() - start)
    return {"peak_extra_bytes": peak - before, "seconds": sorted(times)[len(times) // 2]}


def max_differences(n: int, vocab: int) -> dict:
    out = {}
    for loss in ("tidal", "forward_kl"):
        s, z, lam = inputs(n, vocab)
        a = METHODS[f"{loss}/chunked"](s, z, lam)
        a.backward()
        grad_a, s.grad = s.grad, None
        b = METHODS[f"{loss}/naive"](s, z, lam)
        b.backward()
        out[loss] = ((a - b).abs().item(), (grad_a - s.grad).abs().max().item())
        del grad_a
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.n, args.vocab, args.repeats)))
        return

    results = {}
    for method in METHODS:
        cmd = [sys.executable, __file__, "--worker", method, "--n", str(args.n)]
        cmd += ["--vocab", str(args.vocab), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    diffs = max_differences(args.n, args.vocab)

    mib = 1024**2
    print(
        f"N = {args.n} masked positions, V = {args.vocab}, float32, 1 thread, median of {args.repeats}"
    )
    print(
        f"{'loss':<12} {'peak extra (MiB)':>28} {'ratio':>7} {'time (s)':>22} {'ratio':>7} "
        f"{'|dloss|':>9} {'max|dgrad|':>11}"
    )
    for loss in ("tidal", "forward_kl"):
        ours, naive = results[f"{loss}/chunked"], results[f"{loss}/naive"]
        mem_ratio = ours["peak_extra_bytes"] / naive["peak_extra_bytes"]
        time_ratio = ours["seconds"] / naive["seconds"]
        print(
            f"{loss:<12} {ours['peak_extra_bytes'] / mib:>12.0f} vs {naive['peak_extra_bytes'] / mib:>8.0f}"
            f"     {mem_ratio:>7.2f} {ours['seconds']:>9.2f} vs {naive['seconds']:>7.2f}     "
            f"{time_ratio:>7.2f} {diffs[loss][0]:>9.1e} {diffs[loss][1]:>11.1e}"
        )


if __name__ == "__main__":
    main()
