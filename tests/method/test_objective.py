"""distill_step: the per-batch algorithm of docs/method.md §3, §8, §9 with recording fakes."""

import pytest
import torch

from tide_lightning.method.objective import ObjectiveConfig, distill_step
from tide_lightning.models import build_student

V, MASK, TEACHER_MASK = 40, 39, 38


class FakeTeacher:
    """Records its calls; returns fixed random logits per selected position."""

    mask_token_id = TEACHER_MASK

    def __init__(self, vocab: int = V) -> None:
        self.calls = []
        self.vocab = vocab

    def logits(self, input_ids, logits_at, *, attention_mask=None, clean_ids=None):
        self.calls.append((input_ids.clone(), logits_at.clone(), clean_ids))
        g = torch.Generator().manual_seed(int(logits_at.sum()))
        return torch.randn(int(logits_at.sum()), self.vocab, generator=g)


@pytest.fixture(scope="module")
def student():
    return build_student(V, 16, 1, 2, MASK, seed=0)


def shared_batch(b=3, length=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (b, length), generator=g)
    maskable = torch.ones(b, length, dtype=torch.bool)
    maskable[:, :4] = False  # prompt
    return {"input_ids": ids, "maskable": maskable, "attention_mask": torch.ones_like(maskable)}


def settings(**kw):
    return ObjectiveConfig(**{"variant": "tide_shared", "block_size": 8, **kw})


def step(*args, pipeline="shared"):
    return distill_step(*args, pipeline=pipeline)


def test_ce_variant_has_no_distill_term(student):
    out = step(
        student, None, shared_batch(), settings(variant="ce"), 0.5, torch.Generator().manual_seed(0)
    )
    assert out.loss.item() == out.ce.item() and out.distill.item() == 0.0


def test_compdemo_one_batched_teacher_call_with_complementary_halves(student):
    teacher, batch = FakeTeacher(), shared_batch()
    out = step(student, teacher, batch, settings(), 0.5, torch.Generator().manual_seed(1))
    assert len(teacher.calls) == 1
    ids, wanted, clean = teacher.calls[0]
    b = batch["input_ids"].shape[0]
    assert ids.shape[0] == 2 * b and torch.equal(clean, torch.cat([batch["input_ids"]] * 2))
    pass1, pass2 = wanted[:b], wanted[b:]
    assert not (pass1 & pass2).any()
    # each pass masks (with the teacher's id) exactly what it is read at; the rest is clean
    for rows, want in ((ids[:b], pass1), (ids[b:], pass2)):
        assert (rows[want] == TEACHER_MASK).all()
        assert torch.equal(rows[~want], batch["input_ids"][~want])
    masked = pass1 | pass2
    assert not masked[:, :4].any()  # prompt never masked
    assert out.kl_to_teacher.shape == (int(masked.sum()),)
    assert torch.isfinite(out.loss) and out.distill.item() > 0
    assert out.loss.item() == pytest.approx(out.ce.item() + out.distill.item(), rel=1e-6)


def test_without_compdemo_teacher_sees_the_student_mask(student):
    teacher = FakeTeacher()
    step(
        student,
        teacher,
        shared_batch(),
        settings(compdemo=False),
        0.5,
        torch.Generator().manual_seed(1),
    )
    ids, wanted, _ = teacher.calls[0]
    assert (ids[wanted] == TEACHER_MASK).all() and ids.shape[0] == 3


def test_same_generator_same_step(student):
    teacher = FakeTeacher()
    a = step(student, teacher, shared_batch(), settings(), 0.3, torch.Generator().manual_seed(5))
    b = step(student, teacher, shared_batch(), settings(), 0.3, torch.Generator().manual_seed(5))
    assert a.loss.item() == b.loss.item()


def test_lambda_follows_the_schedule(student):
    early = step(
        student, FakeTeacher(), shared_batch(), settings(), 0.0, torch.Generator().manual_seed(2)
    )
    late = step(
        student, FakeTeacher(), shared_batch(), settings(), 1.0, torch.Generator().manual_seed(2)
    )
    # same masks, lambda_train 0.1 -> 0.9: lambda_t scales by 9
    assert late.lambda_t_mean.item() == pytest.approx(9 * early.lambda_t_mean.item(), rel=1e-5)
    kl = step(
        student,
        FakeTeacher(),
        shared_batch(),
        settings(variant="kl"),
        0.5,
        torch.Generator().manual_seed(2),
    )
    assert kl.lambda_t_mean.item() == 0.0


def test_per_block_time_runs(student):
    out = step(
        student,
        FakeTeacher(),
        shared_batch(),
        settings(per_block_time=True),
        0.5,
        torch.Generator().manual_seed(3),
    )
    assert torch.isfinite(out.loss)


def cross_batch():
    # student: [p p | c0 c0 | c1 | c2 c2 | eos]; teacher: [bos | c0 | c1 c1 | c2 | pad]
    return {
        "input_ids": torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]]),
        "maskable": torch.tensor([[False, False, True, True, True, True, True, True]]),
        "attention_mask": torch.ones(1, 8, dtype=torch.bool),
        "student_chunk_ids": torch.tensor([[-1, -1, 0, 0, 1, 2, 2, -1]]),
        "teacher_input_ids": torch.tensor([[9, 10, 11, 12, 13, 0]]),
        "teacher_attention_mask": torch.tensor([[True] * 5 + [False]]),
        "teacher_chunk_ids": torch.tensor([[-1, 0, 1, 1, 2, -1]]),
    }


@pytest.mark.parametrize(
    "variant,compdemo", [("tide_cross", False), ("calm", False), ("tide_shared_chunk", True)]
)
def test_cross_masks_whole_chunks_on_both_sides(student, variant, compdemo):
    teacher = FakeTeacher(vocab=20)
    s = settings(variant=variant, compdemo=compdemo, temperature=5.0)
    out = step(
        student, teacher, cross_batch(), s, 0.5, torch.Generator().manual_seed(4), pipeline="cross"
    )
    ids, wanted, _ = teacher.calls[0]
    b = 1
    teacher_masked = wanted[:b] | wanted[b:] if compdemo else wanted
    tchunks = cross_batch()["teacher_chunk_ids"]
    for c in range(3):  # a chunk is masked whole or not at all
        members = teacher_masked[tchunks == c]
        assert members.all() or not members.any()
    assert not teacher_masked[tchunks < 0].any()
    assert (ids[wanted] == TEACHER_MASK).all()
    assert torch.isfinite(out.loss)
    assert out.chunk_kl is not None and out.chunk_kl.numel() == out.kl_t.numel()
    # A clean-first (WeDLM-layout) teacher gets the teacher's own clean ids, per pass.
    tx0 = cross_batch()["teacher_input_ids"]
    clean = teacher.calls[0][2]
    assert torch.equal(clean, torch.cat([tx0, tx0]) if compdemo else tx0)
