"""Generation speed of the block-diffusion sampler against autoregressive decoding (issue 5).

Everything is built in this process, CPU by default: a student and a ``Qwen3ForCausalLM``
of the same width, depth and vocabulary. Speed of autoregressive decoding does not
depend on the weights, but the threshold mode's speed does (it commits every token the
model is sure of), so the student is first trained for a few hundred steps, with the
project's masking and block-diffusion loss, on a toy language whose continuations are
predictable: a random motif of 1 to 4 tokens, repeated. The figures printed:

- sampler tokens/s over AR tokens/s at one token per step (paper, GPU: 41.0 / 51.3 = 0.80);
- the same in threshold mode, with the average tokens committed per step;
- cached prefix over recomputed prefix (the published sampler's way), per mode, at a
  short and a long prompt.

    python benchmarks/generation_speed.py [--hidden 64 --layers 2 --vocab 512] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from tide_lightning.bench import ar_baseline_like, bench_runs, format_table, measure
from tide_lightning.losses import masked_diffusion_ce
from tide_lightning.masking import apply_mask, sample_mask, sample_time
from tide_lightning.models import build_student

AR = "autoregressive (HF generate)"


def motifs(batch: int, length: int, vocab: int, generator: torch.Generator):
    """Long[B, L] rows repeating a random motif of 1 to 4 tokens drawn from ``0..vocab-1``."""
    period = torch.randint(1, 5, (batch, 1), generator=generator)
    motif = torch.randint(0, vocab, (batch, 4), generator=generator)
    return motif.gather(1, torch.arange(length) % period)


def train_toy(student, steps: int, block_size: int, length: int, seed: int = 0) -> float:
    """Train ``student`` in place on repeated motifs; returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    modulus = student.vocab_size - 2
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    student.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x0 = motifs(16, length, modulus, gen)
        maskable = torch.ones_like(x0, dtype=torch.bool)
        maskable[:, :8] = False  # a few given tokens, like a prompt
        t = sample_time(x0.shape[0], generator=gen)
        masked = sample_mask(x0, maskable, t, gen)
        xt = apply_mask(x0, masked, student.mask_token_id)
        logits = student.forward_train(xt, x0, masked, block_size)
        loss = masked_diffusion_ce(logits, x0, masked, t, maskable)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[32, 448, 1024])
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    student = build_student(
        args.vocab, args.hidden, args.layers, args.heads, mask_token_id=args.vocab - 1,
        num_kv_heads=max(1, args.heads // 2), seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    loss = train_toy(student, args.train_steps, args.block_size, 2 * args.block_size + 64)
    print(
        f"student: width {args.hidden}, depth {args.layers}, vocab {args.vocab}; trained "
        f"{args.train_steps} steps on repeated motifs in {time.perf_counter() - start:.0f} s "
        f"(final loss {loss:.3f}); torch threads {args.threads}\n"
    )
    ar = ar_baseline_like(student)
    eos = args.vocab - 2  # never produced by the toy language: every run is full length
    threshold = f"bd3lm threshold {args.threshold}"
    for prompt_length in args.prompt_lengths:
        prompt = motifs(1, prompt_length, args.vocab - 2, torch.Generator().manual_seed(1))
        runs = bench_runs(
            student, ar, prompt[0].tolist(), args.new_tokens, args.block_size, args.threshold,
            eos_id=eos, pad_id=0, recompute_prefix=True,
        )  # fmt: skip
        results = {m.name: m for m in measure(runs, torch.device("cpu"), 1, args.repeats)}
        print(f"### prompt {prompt_length} tokens, {args.new_tokens} new tokens, batch 1\n")
        print(format_table(list(results.values()), AR))
        rate = {name: m.tokens_per_second for name, m in results.items()}
        one = "bd3lm 1 token/step"
        print(f"- sampler / AR at 1 token/step: {rate[one] / rate[AR]:.2f} (target >= 0.80)")
        print(
            f"- sampler / AR in threshold mode: {rate[threshold] / rate[AR]:.2f} (target >= 2.0), "
            f"{results[threshold].tokens_per_step:.2f} tokens/step"
        )
        for mode in (one, threshold):
            speedup = rate[mode] / rate[f"{mode}, prefix recomputed"]
            print(f"- cached / recomputed prefix, {mode}: {speedup:.2f}x (target >= 1.5)")
        print()


if __name__ == "__main__":
    main()
