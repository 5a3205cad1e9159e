"""The aligned teacher view in distill_step: the teacher reads another sequence, the token
losses run at masked student positions that have a teacher position, |M| counts those,
and CompDemo's halves reach the teacher through the alignment."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tide_lightning.method.objective import ObjectiveConfig, distill_step
from tide_lightning.method.teacher_view import to_teacher
from tide_lightning.models import build_student

V, MASK, TEACHER_MASK, PREFIX = 40, 39, 38, 5


class ContentTeacher:
    """Logits that depend on the clean token and on how many tokens its row masks.

    Position-free, so a teacher that reads the same tokens at shifted positions gives
    the same logits, and only if it masks the same tokens (CompDemo's halves included).
    """

    mask_token_id = TEACHER_MASK

    def __init__(self) -> None:
        self.calls = []

    def logits(self, input_ids, logits_at, *, attention_mask=None, clean_ids=None):
        self.calls.append((input_ids.clone(), logits_at.clone()))
        base = 3.0 * F.one_hot(clean_ids, V).float()
        masked = (input_ids == TEACHER_MASK).sum(1).float()
        ramp = torch.arange(V, dtype=torch.float32) / V
        return (base + 0.3 * masked[:, None, None] * ramp)[logits_at]


@pytest.fixture(scope="module")
def student():
    return build_student(V, 16, 1, 2, MASK, seed=0)


def shared_batch(b=3, length=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (b, length), generator=g)
    maskable = torch.ones(b, length, dtype=torch.bool)
    maskable[:, :4] = False
    return {"input_ids": ids, "maskable": maskable, "attention_mask": torch.ones_like(maskable)}


def shifted_view(batch, aligned=None):
    """The teacher reads ``PREFIX`` template tokens, then the student's tokens."""
    x0 = batch["input_ids"]
    b, length = x0.shape
    tx0 = torch.cat([torch.full((b, PREFIX), 31), x0, torch.full((b, 3), 32)], dim=1)
    pos = torch.arange(length).expand(b, length) + PREFIX
    if aligned is not None:
        pos = torch.where(aligned, pos, -1)
    return {
        **batch,
        "teacher_input_ids": tx0,
        "teacher_attention_mask": torch.ones_like(tx0, dtype=torch.bool),
        "aligned_teacher_pos": pos,
    }


def run(student, teacher, batch, seed=3, **kw):
    objective = ObjectiveConfig(**{"variant": "tide_shared", "block_size": 8, **kw})
    gen = torch.Generator().manual_seed(seed)
    return distill_step(student, teacher, batch, objective, 0.4, gen, pipeline="shared")


@pytest.mark.parametrize("compdemo", [True, False])
def test_fully_aligned_shifted_teacher_gives_the_same_step(student, compdemo):
    batch = shared_batch()
    same = run(student, ContentTeacher(), batch, compdemo=compdemo)
    teacher = ContentTeacher()
    shifted = run(student, teacher, shifted_view(batch), compdemo=compdemo)
    torch.testing.assert_close(shifted.distill, same.distill)
    torch.testing.assert_close(shifted.kl_to_teacher, same.kl_to_teacher)
    ids, wanted = teacher.calls[0]
    assert ids.shape[1] == batch["input_ids"].shape[1] + PREFIX + 3
    assert not wanted[:, :PREFIX].any() and not (ids[:, :PREFIX] == TEACHER_MASK).any()
    if compdemo:  # two halves, disjoint, their union the image of the masked set
        b = batch["input_ids"].shape[0]
        assert ids.shape[0] == 2 * b and not (wanted[:b] & wanted[b:]).any()


def test_only_aligned_masked_positions_are_distilled(student):
    batch = shared_batch()
    aligned = torch.ones_like(batch["maskable"])
    aligned[:, 10:13] = False  # e.g. an end-of-turn token and EOS fill: no teacher token
    aligned[1] = False  # a row with nothing aligned
    teacher = ContentTeacher()
    out = run(student, teacher, shifted_view(batch, aligned), compdemo=False, variant="kl")
    # Replay the step's draws to know the masked set.
    from tide_lightning.method.masking import sample_mask, sample_time

    gen = torch.Generator().manual_seed(3)
    t = sample_time(3, 1e-3, gen)
    masked = sample_mask(batch["input_ids"], batch["maskable"], t, gen)
    distilled = masked & aligned
    assert distilled.sum() < masked.sum()
    assert out.kl_to_teacher.shape == (int(distilled.sum()),)  # |M| counts these only
    ids, wanted = teacher.calls[0]
    pos = shifted_view(batch, aligned)["aligned_teacher_pos"]
    expected = to_teacher(distilled, pos, ids.shape[1])
    assert torch.equal(wanted, expected) and torch.equal(ids == TEACHER_MASK, expected)
    assert not wanted[1].any()
    # KL at T=2 averaged over the distilled positions, times T^2.
    xt = torch.where(masked, MASK, batch["input_ids"])
    with torch.no_grad():
        s_logits = student.forward_train(xt, batch["input_ids"], distilled, 8, None)
    t_logits = teacher.logits(ids, wanted, clean_ids=shifted_view(batch)["teacher_input_ids"])
    ref = F.kl_div(
        F.log_softmax(s_logits / 2, -1), F.log_softmax(t_logits / 2, -1), log_target=True,
        reduction="none",
    ).sum(-1).mean() * 4  # fmt: skip
    torch.testing.assert_close(out.distill.detach(), ref, rtol=1e-4, atol=1e-5)


def test_to_teacher_scatters_flags_through_positions():
    flags = torch.tensor([[True, True, False, True]])
    pos = torch.tensor([[4, -1, 6, 7]])
    assert to_teacher(flags, pos, 9).nonzero()[:, 1].tolist() == [4, 7]


def test_real_tokenizers_two_templates_and_a_tiny_teacher(qwen3):
    """Qwen3's template for the student, a second one for the teacher, a tiny MoE teacher."""
    from tide_lightning.data.collate import collate
    from tide_lightning.data.examples import ExampleBuilder
    from tide_lightning.models.teachers import build_tiny_moe_teacher

    teacher_tok = copy.deepcopy(qwen3)
    teacher_tok.chat_template = (
        "{%- for m in messages %}{{- '### ' + m['role'] + ':\\n' + m['content'] + '\\n' }}"
        "{%- endfor %}{{- eos_token }}"
    )
    builder = ExampleBuilder(
        qwen3, 64, 32, qwen3.eos_token_id, "shared", teacher_tok, 96, teacher_view="aligned"
    )
    chats = [
        [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5."}],
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another, with a reason?"},
            {"role": "assistant", "content": "Green, because grass is green."},
        ],
    ]
    examples = [builder.example(SimpleNamespace(text=None, messages=m)) for m in chats]
    batch = collate(examples, qwen3.pad_token_id, teacher_tok.pad_token_id)
    rows = len(qwen3)
    student = build_student(rows, 16, 1, 2, qwen3.mask_token_id, seed=0)
    teacher = build_tiny_moe_teacher(rows, qwen3.mask_token_id, qwen3.pad_token_id, 16, 1, seed=1)
    objective = ObjectiveConfig(variant="tide_shared", block_size=32)
    out = distill_step(
        student, teacher, batch, objective, 0.5, torch.Generator().manual_seed(0), pipeline="shared"
    )
    assert torch.isfinite(out.loss) and out.distill > 0
    out.loss.backward()
    assert student.model.get_input_embeddings().weight.grad.abs().sum() > 0
    # The distilled positions are maskable answer tokens with a teacher position.
    pos = batch["aligned_teacher_pos"]
    assert out.kl_to_teacher.numel() <= int((batch["maskable"] & (pos >= 0)).sum())
    answers = qwen3.decode(batch["input_ids"][batch["maskable"] & (pos >= 0)])
    # Each final "." merges with the teacher template's "\n" into one ".\n" token that
    # straddles the content's edge: left unpaired, never paired with another id.
    assert answers == "5Green, because grass is green"
