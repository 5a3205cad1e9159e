"""DistillationModule behaviour outside the happy path: non-finite steps, the LR schedule."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tide_lightning.config import OptimConfig
from tide_lightning.method.objective import ObjectiveConfig
from tide_lightning.models import build_student
from tide_lightning.models.teachers import build_tiny_moe_teacher
from tide_lightning.training.module import DistillationModule, warmup_cosine

V, MASK, TEACHER_MASK = 40, 39, 38


def nan_teacher(bad: int):
    """A real tiny MoE teacher whose output is non-finite for its first ``bad`` calls."""
    adapter = build_tiny_moe_teacher(V, TEACHER_MASK, seed=0)
    clean_logits, calls = adapter.logits, []

    def logits(*args, **kwargs):
        calls.append(1)
        out = clean_logits(*args, **kwargs)
        return out * float("nan") if len(calls) <= bad else out

    adapter.logits = logits
    return adapter


def batches(n=8):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        ids = torch.randint(0, 30, (2, 16), generator=g)
        yield {"input_ids": ids, "maskable": torch.ones_like(ids, dtype=torch.bool)}


def fit(teacher, max_bad_steps, steps=4):
    student = build_student(V, 16, 1, 2, MASK, seed=0)
    before = [p.detach().clone() for p in student.parameters()]
    objective = ObjectiveConfig(variant="kl", block_size=8)
    optim = OptimConfig(lr=1e-2, max_bad_steps=max_bad_steps)
    module = DistillationModule(student, teacher, objective, optim, total_steps=steps)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, DataLoader(list(batches()), batch_size=None))
    return module, trainer, before


def test_non_finite_teacher_output_skips_the_step():
    module, trainer, before = fit(nan_teacher(bad=2), max_bad_steps=5)
    assert trainer.global_step == 4  # two skipped batches did not count as steps
    assert module.bad_steps == 0  # reset by the next good step
    after = list(module.student.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_persistent_non_finite_steps_stop_the_run_with_a_message():
    with pytest.raises(RuntimeError, match="consecutive steps had a non-finite"):
        fit(nan_teacher(bad=100), max_bad_steps=2)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 0.1, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 0.1, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 0.1, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 0.1, 0.1) == pytest.approx(0.1)
