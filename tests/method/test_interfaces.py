"""The Student/Teacher protocols distill_step is written against, and its objective group."""

import pytest
import torch

from tide_lightning.errors import ConfigError
from tide_lightning.method.interfaces import Student, Teacher
from tide_lightning.method.objective import ObjectiveConfig, distill_step
from tide_lightning.models import build_student
from tide_lightning.models.teachers import build_tiny_moe_teacher

V, STUDENT_MASK, TEACHER_MASK = 40, 39, 37


class RecordingStudent:
    """A Student by shape only: records its noisy input, returns random logits."""

    mask_token_id = STUDENT_MASK

    def __init__(self) -> None:
        self.xt = None
        self.weight = torch.zeros(V, requires_grad=True)

    def forward_train(self, xt, x0, logits_at, block_size, attention_mask=None):
        self.xt = xt.clone()
        g = torch.Generator().manual_seed(0)
        return torch.randn(int(logits_at.sum()), V, generator=g) + self.weight


class RecordingTeacher:
    mask_token_id = TEACHER_MASK

    def __init__(self) -> None:
        self.ids = self.wanted = None

    def logits(self, input_ids, logits_at, *, attention_mask=None, clean_ids=None):
        self.ids, self.wanted = input_ids.clone(), logits_at.clone()
        return torch.randn(int(logits_at.sum()), V, generator=torch.Generator().manual_seed(1))


def batch():
    ids = torch.randint(0, 30, (2, 16), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "maskable": torch.ones_like(ids, dtype=torch.bool)}


def test_the_packages_models_and_the_fakes_satisfy_the_protocols():
    student = build_student(V, 16, 1, 2, STUDENT_MASK, seed=0)
    teacher = build_tiny_moe_teacher(V, TEACHER_MASK, seed=0)
    assert isinstance(student, Student) and student.mask_token_id == STUDENT_MASK
    assert isinstance(teacher, Teacher) and teacher.mask_token_id == TEACHER_MASK
    assert isinstance(teacher, Student)  # the tiny MoE trained from scratch with ce
    assert isinstance(RecordingStudent(), Student) and isinstance(RecordingTeacher(), Teacher)
    assert not isinstance(object(), Teacher)


@pytest.mark.parametrize("compdemo", [False, True])
def test_each_model_is_masked_with_its_own_mask_id(compdemo):
    student, teacher = RecordingStudent(), RecordingTeacher()
    objective = ObjectiveConfig(variant="tide_shared", block_size=8, compdemo=compdemo)
    out = distill_step(
        student, teacher, batch(), objective, 0.5, torch.Generator().manual_seed(2),
        pipeline="shared",
    )  # fmt: skip
    masked = student.xt == STUDENT_MASK
    assert masked.any() and not (student.xt == TEACHER_MASK).any()
    assert (teacher.ids[teacher.wanted] == TEACHER_MASK).all()
    assert not (teacher.ids == STUDENT_MASK).any()
    out.loss.backward()
    assert student.weight.grad is not None


def test_a_distillation_variant_without_teacher_is_refused():
    with pytest.raises(ValueError, match="needs a teacher"):
        distill_step(
            RecordingStudent(), None, batch(), ObjectiveConfig(variant="kl", block_size=8), 0.5,
            pipeline="shared",
        )  # fmt: skip


def test_resolved_fills_only_the_per_pipeline_defaults():
    unset = ObjectiveConfig(variant="tide_shared_chunk")
    cross = unset.resolved("cross")
    assert (cross.temperature, cross.time_weight, cross.compdemo) == (5.0, "uniform", True)
    assert cross.resolved("cross") is cross  # nothing left to fill
    given = ObjectiveConfig(variant="kl", temperature=1.5, time_weight="uniform").resolved("shared")
    assert (given.temperature, given.time_weight, given.compdemo) == (1.5, "uniform", False)
    with pytest.raises(ConfigError, match="pipeline must be one of shared, cross"):
        unset.resolved("both")
    with pytest.raises(ConfigError, match="objective.variant: variant 'tide_shared_chunk' runs"):
        unset.resolved("shared")


def test_objective_checks_hold_outside_a_config_too():
    with pytest.raises(ConfigError, match="objective.temperature must be > 0"):
        ObjectiveConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="objective.lambda_shape must be one of"):
        ObjectiveConfig(lambda_shape="bogus")
