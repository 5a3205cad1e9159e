"""The published modes added as variants run through distill_step as their terms say."""

from __future__ import annotations

import pytest
import torch

from tide_lightning.method.objective import ObjectiveConfig, distill_step
from tide_lightning.models import build_student

V, MASK, TEACHER_MASK = 40, 39, 38


class FixedTeacher:
    """Logits that depend only on the selected positions (the same for every variant)."""

    mask_token_id = TEACHER_MASK

    def logits(self, input_ids, logits_at, *, attention_mask=None, clean_ids=None):
        g = torch.Generator().manual_seed(int(logits_at.sum()))
        return torch.randn(int(logits_at.sum()), V, generator=g)


@pytest.fixture(scope="module")
def student():
    return build_student(V, 16, 1, 2, MASK, seed=0)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (2, 16), generator=g)
    maskable = torch.ones(2, 16, dtype=torch.bool)
    maskable[:, :4] = False
    return {"input_ids": ids, "maskable": maskable, "attention_mask": torch.ones_like(maskable)}


def _step(student, variant, **kw):
    config = ObjectiveConfig(variant=variant, block_size=8, compdemo=False, **kw)
    config = config.resolved("shared")
    return distill_step(
        student, FixedTeacher(), _batch(), config, 0.3, torch.Generator().manual_seed(4),
        pipeline="shared",
    )  # fmt: skip


def _distill(student, variant, **kw):
    return _step(student, variant, **kw).distill


def test_composite_step_reports_each_term(student):
    out = _step(student, "tide_shared+kl")
    assert set(out.terms) == {"tide_shared", "kl"}
    assert out.distill.item() == pytest.approx(sum(v.item() for v in out.terms.values()))
    assert out.terms["kl"].item() == pytest.approx(_distill(student, "kl").item(), rel=1e-6)
    assert _step(student, "kl").terms is None


def test_composite_step_is_the_sum_of_its_terms_steps(student):
    both = _distill(student, "tide_shared+kl")
    parts = _distill(student, "tide_shared") + _distill(student, "kl")
    assert both.item() == pytest.approx(parts.item(), rel=1e-5) and both.item() > 0


def test_tide_cross_b_step_is_reverse_kl_on_the_same_positions(student):
    assert _distill(student, "tide_cross_shared").item() == pytest.approx(
        _distill(student, "reverse_kl").item(), rel=1e-6
    )


def test_composite_resolves_compdemo_from_its_terms():
    assert ObjectiveConfig(variant="tide_shared+kl").resolved("shared").compdemo is True
    assert ObjectiveConfig(variant="kl+reverse_kl").resolved("shared").compdemo is False


def _cross_batch():
    # student: [p p | c0 c0 | c1 | c2 c2 | eos]; teacher: [bos | c0 | c1 c1 | c2 | pad]
    return {
        "input_ids": torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]] * 2),
        "maskable": torch.tensor([[False, False, True, True, True, True, True, True]] * 2),
        "attention_mask": torch.ones(2, 8, dtype=torch.bool),
        "student_chunk_ids": torch.tensor([[-1, -1, 0, 0, 1, 2, 2, -1]] * 2),
        "teacher_input_ids": torch.tensor([[9, 10, 11, 12, 13, 0]] * 2),
        "teacher_attention_mask": torch.tensor([[True] * 5 + [False]] * 2),
        "teacher_chunk_ids": torch.tensor([[-1, 0, 1, 1, 2, -1]] * 2),
    }


@pytest.mark.parametrize("compdemo", [False, True])
def test_reverse_chunk_tidal_runs_in_the_cross_step(student, compdemo):
    config = ObjectiveConfig(
        variant="reverse_tide_shared_chunk", block_size=8, compdemo=compdemo
    ).resolved("cross")
    assert config.time_weight == "uniform" and config.temperature == 5.0
    student.zero_grad()
    out = distill_step(
        student, FixedTeacher(), _cross_batch(), config, 0.5, torch.Generator().manual_seed(2),
        pipeline="cross",
    )  # fmt: skip
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.lambda_t_mean.item() > 0
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
