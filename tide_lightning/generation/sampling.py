"""Block-diffusion decoding (docs/method.md §4) with a cached prefix.

Prompts are left-padded to a multiple of the block size ``Bk``; position ids count
real tokens only, so a prompt decodes the same alone or inside a padded batch. Then
block by block: append ``Bk`` masks, denoise them over ``steps_per_block`` forwards,
commit, and move on. A committed token is never re-masked.

Each step takes the argmax of the block's logits (Gumbel-perturbed when
``temperature > 0``), scores every still-masked position by the softmax probability of
that token (``low_confidence``) or by a uniform draw (``random``), and commits the
``k`` best, ``k`` following the linear schedule (``Bk / steps_per_block`` per step). With
``threshold=tau`` it instead commits every masked token whose probability reaches
``tau`` (at least the most confident one), which is the parallel-decoding mode.

Why the cache matters: the published sampler re-encodes the whole prefix (prompt and
every committed block) at the start of each block, so block ``n`` costs a forward over
``P + n Bk`` tokens on top of its denoising steps. Here the prefix's keys/values are
computed once, into preallocated buffers (:mod:`tide_lightning.models.kv_cache`), and
committing block ``n`` shares its forward with the first denoising step of block
``n + 1`` (:meth:`BD3LMStudent.extend_and_forward_block`), so a block costs exactly its
denoising steps. Two reference modes exist for comparison, both with every other
optimisation and both giving identical tokens: ``prefix="per_block"`` re-encodes the
prefix at the start of each block (the published sampler), ``prefix="per_step"``
re-encodes it at every denoising step (no cache at all, as LLaDA-style samplers run the
whole sequence each step). The LM head runs only at still-masked positions.
Rows that have produced EOS leave the batch, so a finished prompt costs nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tide_lightning.models.kv_cache import BlockCache
from tide_lightning.models.masks import position_ids_from_mask

REMASKING = ("low_confidence", "random")
PREFIX_MODES = ("cached", "per_block", "per_step")


@dataclass(frozen=True)
class SampleOutput:
    """What :func:`generate` produced.

    Attributes:
        tokens: Long[B, N] generated ids (N = ``max_new_tokens``). After the block in
            which a row produced EOS, the rest of the row is filled with EOS.
        order: Long[B, N] index of the step (counted over the whole run, per row, from
            0) at which each position was committed; -1 where nothing was generated.
        steps: Long[B] denoising forwards each row took part in.
    """

    tokens: Tensor
    order: Tensor
    steps: Tensor

    def tokens_per_step(self) -> float:
        """Average number of tokens committed per denoising step (over the batch)."""
        committed = int((self.order >= 0).sum())
        return committed / max(int(self.steps.sum()), 1)


def left_pad(
    prompts: Sequence[Sequence[int]], block_size: int, pad_id: int, device=None
) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to a common length that is a multiple of ``block_size``.

    Args:
        prompts: B lists of token ids (an empty prompt is allowed).
        block_size: ``Bk``.
        pad_id: filler id (never attended).
        device: where the tensors go.

    Returns:
        ``(ids, valid)``: Long[B, P] and Bool[B, P], ``P = Bk * ceil(max_len / Bk)``.
    """
    longest = max((len(p) for p in prompts), default=0)
    length = block_size * math.ceil(longest / block_size)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, length - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            valid[row, length - len(prompt) :] = True
    return ids.to(device), valid.to(device)


def transfer_schedule(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each step under the linear schedule.

    Each step commits ``num_masked // steps`` tokens, the first ``num_masked % steps``
    steps one more; steps that would commit nothing are dropped.

    Args:
        num_masked: masked positions in the block.
        steps: denoising steps for the block.

    Returns:
        Positive counts summing to ``num_masked``, e.g. ``(5, 3) -> [2, 2, 1]``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base, extra = divmod(num_masked, steps)
    counts = [base + (i < extra) for i in range(steps)]
    return [c for c in counts if c > 0]


def propose(
    logits: Tensor,
    temperature: float,
    remasking: str,
    generator: torch.Generator | None = None,
    at: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Candidate tokens and their confidence for the positions of a block.

    Args:
        logits: Float[B, Q, V], or Float[N, V] for the ``at`` positions only (row-major).
        temperature: 0 for greedy argmax; otherwise Gumbel-max sampling of
            ``softmax(logits / temperature)``.
        remasking: ``"low_confidence"`` (confidence = softmax probability of the
            candidate under the raw logits) or ``"random"`` (a uniform draw).
        generator: random source for the Gumbel noise and the random scores.
        at: Bool[B, Q] positions the rows of a 2-D ``logits`` belong to. Random draws
            are made for the whole ``[B, Q]`` block and then restricted to ``at``, so a
            seeded run does not depend on which positions were asked for.

    Returns:
        ``(candidates, confidence)``: Long and Float, shaped like ``logits[..., 0]``.
    """
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    logits = logits.float()
    shape = logits.shape[:-1] if at is None else at.shape

    def draw(*size: int, dtype=torch.float32) -> Tensor:
        noise = torch.rand(size, generator=generator, device=logits.device, dtype=dtype)
        return noise if at is None else noise[at]

    if temperature > 0:
        gumbel = -torch.log(
            -torch.log(draw(*shape, logits.shape[-1], dtype=torch.float64).clamp_min(1e-20))
        )
        candidates = (logits.double() / temperature + gumbel).argmax(-1)
    else:
        candidates = logits.argmax(-1)  # ties: the first index
    if remasking == "random":
        return candidates, draw(*shape)
    # softmax + gather: a third faster than exp(picked - logsumexp) on a block's logits.
    return candidates, logits.softmax(-1).gather(-1, candidates[..., None]).squeeze(-1)


def select_commits(
    confidence: Tensor, masked: Tensor, k: int | None = None, threshold: float | None = None
) -> Tensor:
    """Which still-masked positions to commit this step.

    Exactly one of ``k`` and ``threshold`` is given. With ``k``: the ``min(k, masked)``
    most confident masked positions of each row. With ``threshold``: every masked
    position with confidence ``>= threshold``, plus the most confident masked one, so a
    row with any mask commits at least one. Ties go to the lower index.

    Args:
        confidence: Float[B, Q].
        masked: Bool[B, Q] positions still masked.
        k: tokens per row.
        threshold: confidence level ``tau``.

    Returns:
        Bool[B, Q], a subset of ``masked``.
    """
    if (k is None) == (threshold is None):
        raise ValueError("give exactly one of k and threshold")
    score = confidence.float().masked_fill(~masked, -math.inf)
    if threshold is not None:
        best = torch.zeros_like(masked)
        best.scatter_(1, score.argmax(-1, keepdim=True), True)
        return masked & ((score >= threshold) | best)
    k = min(k, score.shape[1])
    top = score.topk(k, dim=-1, sorted=False).indices
    chosen = torch.zeros_like(masked).scatter_(1, top, True)
    return chosen & masked


@torch.inference_mode()
def generate(
    student,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 256,
    block_size: int = 32,
    steps_per_block: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    threshold: float | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
    prefix: str = "cached",
) -> SampleOutput:
    """Decode continuations of a batch of prompts block by block.

    Args:
        student: a :class:`~tide_lightning.models.BD3LMStudent`
            (``extend_and_forward_block``, ``forward_block``, ``mask_token_id``).
        prompts: B lists of prompt token ids (no padding).
        max_new_tokens: ``N``; the last block is shortened when ``N % Bk != 0``.
        block_size: ``Bk``.
        steps_per_block: denoising steps per full block (default ``Bk``: one token per
            step). Ignored in threshold mode.
        temperature: 0 for greedy.
        remasking: ``"low_confidence"`` or ``"random"``.
        threshold: commit every masked token with confidence ``>= threshold`` (at least
            one per step) instead of following the schedule.
        eos_id: a row stops after the block in which it produced this id; None never stops.
        pad_id: left-padding id.
        generator: random source (Gumbel noise, random scores).
        prefix: how the prefix's keys/values are obtained: ``"cached"`` (computed once,
            extended by each committed block), or, for comparison, ``"per_block"``
            (re-encoded at every block, as the published sampler does) or ``"per_step"``
            (re-encoded at every denoising step: no cache).

    Returns:
        :class:`SampleOutput`.
    """
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {REMASKING}, got {remasking!r}")
    if prefix not in PREFIX_MODES:
        raise ValueError(f"prefix must be one of {PREFIX_MODES}, got {prefix!r}")
    device = next(student.parameters()).device
    batch = len(prompts)
    steps_per_block = steps_per_block or block_size
    mask_id = student.mask_token_id
    ids, valid = left_pad(prompts, block_size, pad_id, device)
    lengths = valid.sum(-1)

    fill = pad_id if eos_id is None else eos_id
    tokens = torch.full((batch, max_new_tokens), fill, dtype=torch.long, device=device)
    order = torch.full((batch, max_new_tokens), -1, dtype=torch.long, device=device)
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    live = torch.arange(batch, device=device)  # rows still generating
    cache = None
    last = None  # (ids, positions) of the committed block the cache does not hold yet

    for start in range(0, max_new_tokens, block_size):
        width = min(block_size, max_new_tokens - start)
        block_pos = lengths[live, None] + start + torch.arange(width, device=device)
        if cache is None or prefix != "cached":
            # The whole prefix (prompt and committed blocks) goes into a fresh cache.
            clean_ids = torch.cat([ids[live], tokens[live, :start]], dim=1)
            done = torch.ones_like(clean_ids[:, ids.shape[1] :], dtype=torch.bool)
            clean_valid = torch.cat([valid[live], done], dim=1)
            clean_pos = position_ids_from_mask(clean_valid)
            room = clean_ids.shape[1] + (max_new_tokens - start if prefix == "cached" else width)
            cache = BlockCache.empty(len(live), device, room)
        else:
            (clean_ids, clean_pos), clean_valid = last, None
        block = torch.full((len(live), width), mask_id, dtype=torch.long, device=device)
        block_order = torch.full_like(block, -1)
        schedule = None
        if threshold is None:
            schedule = transfer_schedule(width, max(1, round(steps_per_block * width / block_size)))
        first_step = steps[live, None].clone()
        block_steps = torch.zeros_like(first_step[:, 0])
        masked = torch.ones_like(block, dtype=torch.bool)
        # The first denoising step shares its forward with committing the previous block.
        logits = student.extend_and_forward_block(
            cache, clean_ids, clean_pos, block, block_pos, block_size, clean_valid, masked
        )
        if prefix != "per_step" and clean_valid is not None:
            cache = cache.without_padding()  # one prompt: no padding left, no attention mask
        step = 0
        while True:
            logits[:, mask_id] = -math.inf  # committing a mask would undo the step
            candidates, confidence = propose(logits, temperature, remasking, generator, masked)
            candidates = block.masked_scatter(masked, candidates)
            confidence = torch.zeros(block.shape, device=device).masked_scatter(masked, confidence)
            if schedule is not None:
                commit = select_commits(confidence, masked, k=schedule[step])
            else:
                commit = select_commits(confidence, masked, threshold=threshold)
            block = torch.where(commit, candidates, block)
            block_order = torch.where(commit, first_step + step, block_order)
            step += 1
            block_steps += masked.any(-1)  # threshold mode: rows finish at different steps
            masked = block == mask_id
            if not masked.any():
                break
            if prefix == "per_step":
                cache = BlockCache.empty(len(live), device, clean_ids.shape[1] + width)
                logits = student.extend_and_forward_block(
                    cache, clean_ids, clean_pos, block, block_pos, block_size, clean_valid, masked
                )
            else:
                logits = student.forward_block(cache, block, block_pos, logits_at=masked)
        steps[live] += block_steps
        tokens[live, start : start + width] = block
        order[live, start : start + width] = block_order
        if eos_id is not None:
            keep = ~(block == eos_id).any(-1)
            if not bool(keep.all()):
                live, block, block_pos = live[keep], block[keep], block_pos[keep]
                cache = cache.select_rows(keep).without_padding()
        if len(live) == 0 or start + width >= max_new_tokens:
            break
        last = (block, block_pos)
    return SampleOutput(tokens, order, steps)


def trim_at_eos(tokens: Tensor, eos_id: int | None) -> list[list[int]]:
    """Each row of ``tokens`` (Long[B, N]) up to, not including, its first EOS."""
    rows = tokens.tolist()
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
