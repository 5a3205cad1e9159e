"""The paper's mechanisms measured in validation and TensorBoard (mech/*, distill_grad_norm).

Tiny runs through the real config and `fit` write the scalars and the figure;
unit checks pin what they mean: the teacher's accuracy with and without CompDemo on the
masks training would draw (both teacher layouts, the aligned view, the cross pipeline's
chunk masks), lambda_t at the bin centres, and gradient norms that equal autograd's and
stay under Reverse CALM's analytic bound.
"""

from __future__ import annotations

import glob
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tide_lightning.config import OptimConfig, load_config
from tide_lightning.method.losses.chunk_losses import CHUNK_EPS, reverse_calm_loss
from tide_lightning.method.losses.token_losses import tidal_loss
from tide_lightning.method.objective import ObjectiveConfig
from tide_lightning.method.schedules import tidal_lambda
from tide_lightning.models import build_student
from tide_lightning.models.teachers import TeacherAdapter, build_tiny_moe_teacher, teacher_kind
from tide_lightning.training import mechanisms
from tide_lightning.training.metrics import SummedTable, bin_names
from tide_lightning.training.module import MECHANISM_T_BINS, DistillationModule
from tide_lightning.training.run import fit
from tide_lightning.training.tensorboard import RunLogger

CONF = Path(__file__).resolve().parents[2] / "conf"
QUIET = ["trainer.enable_progress_bar=false", "trainer.max_steps=4", "trainer.val_check_interval=2"]
LOGIT_BOUND = math.log((1 - CHUNK_EPS) / CHUNK_EPS)  # |logit(t_c)| under the clamp, 16.12
STEMS = ("teacher_acc", "teacher_acc_compdemo", "teacher_nll", "teacher_nll_compdemo")


def _scalars(run_dir: Path, folder: str = "tensorboard") -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(str(run_dir / folder / "events*")):
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            out.setdefault(f"image:{tag}", []).extend((e.step, 0.0) for e in acc.Images(tag))
    return out


def _fit(conf: str, run_dir: Path, *overrides: str) -> dict[str, list[tuple[int, float]]]:
    fit(load_config(CONF / conf, [f"run_dir={run_dir}", *QUIET, *overrides]))
    return _scalars(run_dir)


# --- tiny runs: what TensorBoard shows ---------------------------------------------------


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mech")
    on = _fit("tiny.yaml", root / "on")
    off = _fit("tiny.yaml", root / "off", "trainer.mechanism_metrics=false")
    return on, off


def test_validation_logs_the_teacher_by_t_and_lambda_t(shared_runs):
    on, _ = shared_runs
    ranges = [n.removeprefix("x_t") for n in bin_names(MECHANISM_T_BINS, "x", sep="_t")]
    assert ranges == ["0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"]
    centers = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    for i, r in enumerate(ranges):
        counts = on[f"mech/masked_tokens_t{r}"]
        assert [s for s, _ in counts] == [2, 4]  # at the step of the weights, each validation
        assert all(c > 0 for _, c in counts)  # stratified times fill every bin
        for stem in STEMS:
            values = [v for _, v in on[f"mech/{stem}_t{r}"]]
            assert all(math.isfinite(v) for v in values), stem
            if "acc" in stem:
                assert all(0.0 <= v <= 1.0 for v in values), stem
            else:
                assert all(v > 0 for v in values), stem
        # lambda_t = lambda_train(progress) * (1 - t) at the bin centre, progress = step / 4
        for step, value in on[f"mech/lambda_t_t{r}"]:
            expected = float(tidal_lambda(centers[i : i + 1], step / 4)[0])
            assert value == pytest.approx(expected, abs=1e-6)
    assert on["mech/lambda_t_t0.0-0.2"][0][1] == pytest.approx(0.45)  # docs/method.md §6
    assert [s for s, _ in on["image:mech/teacher_vs_lambda_t"]] == [2, 4]
    # the teacher is frozen and the masks fixed: the same numbers at every validation
    assert len({v for _, v in on["mech/teacher_nll_t0.4-0.6"]}) == 1
    norms = on["train/distill_grad_norm"]
    assert [s for s, _ in norms] == [0, 1, 2, 3] and all(v >= 0 for _, v in norms)


def test_the_switch_leaves_every_other_number_unchanged(shared_runs):
    on, off = shared_runs
    assert not [t for t in off if t.startswith(("mech/", "image:mech/"))]
    assert "train/distill_grad_norm" not in off
    assert on["val/ce"] == off["val/ce"]  # bit-identical: the mechanism masks are their own
    assert on["val/kl_to_teacher"] == off["val/kl_to_teacher"]
    assert on["train/loss"] == off["train/loss"]  # the gradient probe only reads


def test_cross_run_logs_both_chunk_gradient_norms_within_the_bound(tmp_path):
    logged = _fit("tiny_cross.yaml", tmp_path / "run", "objective.variant=calm")
    temperature = 5.0  # the cross pipeline's default
    for name in ("calm", "reverse_calm"):
        assert [s for s, _ in logged[f"mech/grad_norm_{name}"]] == [2, 4]
        assert all(v > 0 for _, v in logged[f"mech/grad_norm_{name}"])
    # Reverse CALM per chunk: |dl/dLP_c| <= logit bound * s_c / (T C), so the norm over
    # C chunks is at most LOGIT_BOUND / (T sqrt(C)) <= LOGIT_BOUND / T.
    assert all(v <= LOGIT_BOUND / temperature for _, v in logged["mech/grad_norm_reverse_calm_max"])
    assert all(
        mean <= top + 1e-9
        for (_, mean), (_, top) in zip(
            logged["mech/grad_norm_reverse_calm"], logged["mech/grad_norm_reverse_calm_max"],
            strict=True,
        )
    )  # fmt: skip
    assert all(0 <= v <= 1 for _, v in logged["mech/teacher_acc_t0.4-0.6"])
    assert [s for s, _ in logged["train/distill_grad_norm"]] == [0, 1, 2, 3]
    assert "mech/lambda_t_t0.0-0.2" not in logged  # calm has no TIDAL schedule


# --- the measurement itself ---------------------------------------------------------------


class CleanOracle:
    """Reads the clean ids a clean-first teacher gets and predicts them exactly.

    Fails without ``clean_ids`` (as WeDLM's layout does), and scores 1.0 only if every row
    of the ``3B``-row call is paired with its own clean row.
    """

    mask_token_id = 0
    model = None  # what FrozenTeacher reads to move it (nothing to move)

    def __init__(self, vocab: int = 50) -> None:
        self.vocab, self.calls = vocab, 0

    def freeze(self):
        return self

    def to(self, device):
        return self

    def logits(self, ids, logits_at, attention_mask=None, clean_ids=None):
        self.calls += 1
        assert clean_ids is not None and clean_ids.shape == ids.shape
        assert ((ids == clean_ids) | (ids == self.mask_token_id)).all()
        out = torch.zeros(*ids.shape, self.vocab)
        out.scatter_(-1, clean_ids[..., None], 10.0)
        return out[logits_at]


def _shared_batch(rows=8, length=32, seed=1):
    x0 = torch.randint(1, 50, (rows, length), generator=torch.Generator().manual_seed(seed))
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, :4] = False  # a prompt
    return {"input_ids": x0, "maskable": maskable}


def test_clean_first_teachers_get_the_clean_rows_of_every_pass():
    teacher = CleanOracle()
    sums = mechanisms.teacher_sums(teacher, _shared_batch(), bins=5, generator=torch.Generator())
    measured = mechanisms.summarise(sums)
    assert teacher.calls == 1  # plain and CompDemo passes in one call of 3B rows
    assert measured["acc_plain"].tolist() == [1.0] * 5
    assert measured["acc_compdemo"].tolist() == [1.0] * 5
    # one-hot logits of 10 over 50 ids: NLL = log(1 + 49 e^-10) in every bin
    assert measured["nll_plain"].tolist() == pytest.approx(
        [math.log1p(49 * math.exp(-10))] * 5, rel=1e-4
    )
    assert measured["count"].sum() > 0


def test_a_real_clean_first_teacher_runs_in_validation(tmp_path):
    vocab, mask = 40, 38
    tiny = build_tiny_moe_teacher(vocab, mask, seed=0)
    kind = teacher_kind("tiny_moe", mode="clean_first", mask_token_id=mask)
    teacher = TeacherAdapter(tiny.model, kind, block_size=8)
    scalars = _validate(teacher, _batches(vocab), tmp_path, variant="kl")
    assert all(0 <= scalars[f"mech/{s}_t0.4-0.6"] <= 1 for s in STEMS if "acc" in s)
    assert scalars["mech/masked_tokens_t0.0-0.2"] > 0
    assert "mech/lambda_t_t0.0-0.2" not in scalars  # kl has no TIDAL schedule


def _batches(vocab, n=4, rows=4, length=16):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab - 4, (rows, length), generator=g)
        out.append({"input_ids": ids, "maskable": torch.ones_like(ids, dtype=torch.bool)})
    return out


def _validate(teacher, batches, tmp_path, variant="tide_shared", module=None, folder="v"):
    if module is None:
        student = build_student(40, 16, 1, 2, 39, seed=0)
        objective = ObjectiveConfig(variant=variant, block_size=8)
        module = DistillationModule(student, teacher, objective, OptimConfig(), total_steps=4)
    trainer = L.Trainer(
        accelerator="cpu", logger=RunLogger(str(tmp_path), version=folder),
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.validate(module, DataLoader(batches, batch_size=None), verbose=False)
    return {
        tag: values[-1][1] for tag, values in _scalars(tmp_path, f"tensorboard/{folder}").items()
    }


def test_later_validations_reuse_the_teacher_sums_of_the_same_batches(tmp_path):
    class Counting(CleanOracle):
        mask_token_id = 39

    teacher = Counting(40)
    student = build_student(40, 16, 1, 2, 38, seed=0)
    objective = ObjectiveConfig(variant="kl", block_size=8)
    module = DistillationModule(student, teacher, objective, OptimConfig(), total_steps=4)
    batches = _batches(40)
    first = _validate(None, batches, tmp_path, module=module, folder="a")
    calls = teacher.calls
    assert calls == 2 * len(batches)  # the step's teacher pass and the mechanism call
    second = _validate(None, batches, tmp_path, module=module, folder="b")
    assert teacher.calls - calls == len(batches)  # only the step's own passes
    assert first == second
    changed = [dict(b, input_ids=b["input_ids"].flip(1)) for b in batches]
    _validate(None, changed, tmp_path, module=module, folder="c")
    assert teacher.calls - calls == 3 * len(batches)  # other inputs: measured again


def test_aligned_view_masks_only_teacher_positions_of_supervised_tokens():
    batch = _shared_batch(rows=6, length=24)
    shift = 5  # the teacher's rendering has a 5-token header before the student's text
    tx0 = torch.cat([torch.full((6, shift), 7), batch["input_ids"]], dim=1)
    pos = torch.arange(24).expand(6, -1) + shift
    pos = torch.where(batch["maskable"], pos, -1)
    aligned = {
        **batch, "teacher_input_ids": tx0, "aligned_teacher_pos": pos,
        "teacher_attention_mask": torch.ones_like(tx0, dtype=torch.bool),
    }  # fmt: skip
    t = torch.full((6,), 0.9)
    view = mechanisms.masked_view(aligned, "shared", t, torch.Generator().manual_seed(0))
    assert view.ids is tx0 and view.masked.shape == tx0.shape
    assert not view.masked[:, : shift + 4].any()  # header and prompt never hidden
    assert view.masked.float().mean() > 0.5
    sums = mechanisms.teacher_sums(CleanOracle(), aligned, bins=5, generator=torch.Generator())
    assert mechanisms.summarise(sums)["acc_compdemo"].nan_to_num(1.0).tolist() == [1.0] * 5


def test_cross_masks_are_chunk_consistent_and_score_the_active_chunks():
    x0 = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones_like(x0, dtype=torch.bool)
    maskable[:, 0] = False  # chunk 0 holds a prompt token
    s_chunks = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]] * 2)
    t_chunks = torch.tensor([[0, 1, 2, 3, 3, -1]] * 2)
    batch = {
        "input_ids": x0, "maskable": maskable, "student_chunk_ids": s_chunks,
        "teacher_chunk_ids": t_chunks, "teacher_input_ids": torch.arange(1, 7).expand(2, -1),
    }  # fmt: skip
    view = mechanisms.masked_view(batch, "cross", torch.ones(2), torch.Generator())
    assert view.masked[:, :5].all() and not view.masked[:, 5].any()  # whole chunks
    assert not view.scored[:, 0].any() and view.scored[:, 1:5].all()  # chunk 0 is not active
    assert torch.equal(view.half_a | view.half_b, view.masked)
    assert not (view.half_a & view.half_b).any()
    for half in (view.half_a, view.half_b):  # a chunk falls in one half, on the teacher side
        assert (half[:, 3] == half[:, 4]).all()


def test_study_and_validation_share_one_measurement():
    teacher, batches = CleanOracle(), [_shared_batch(seed=s) for s in range(3)]
    measured = mechanisms.teacher_by_t(teacher, batches, bins=5, seed=3)
    gen = torch.Generator().manual_seed(3)
    table = SummedTable(len(mechanisms.SUM_ROWS), 5)
    for b in batches:
        table.update(mechanisms.teacher_sums(teacher, b, bins=5, generator=gen))
    again = mechanisms.summarise(table.compute())
    for key, value in measured.items():
        assert torch.equal(value.nan_to_num(-1), again[key].nan_to_num(-1)), key
    scalars = mechanisms.mechanism_scalars(again, torch.zeros(5))
    assert {n.rsplit("_t", 1)[0] for n in scalars} == {
        "mech/teacher_acc", "mech/teacher_acc_compdemo", "mech/teacher_nll",
        "mech/teacher_nll_compdemo", "mech/masked_tokens", "mech/lambda_t",
    }  # fmt: skip


# --- gradient norms -----------------------------------------------------------------------


def test_gradient_probe_reads_the_distillation_gradient_from_the_step_backward():
    g = torch.Generator().manual_seed(0)
    # chunk level: d reverse CALM / d LP, also through a weight and an accumulation factor
    lp_param = (torch.rand(6, generator=g) * -8).requires_grad_(True)
    student_lp, teacher_lp = lp_param * 1.0, torch.rand(6, generator=g) * -8
    distill = reverse_calm_loss(student_lp, teacher_lp, 5.0)
    probe = mechanisms.GradientNormProbe(distill, student_lp)
    assert probe.value() is None  # nothing before the backward
    ((lp_param.sum() + 3.0 * distill) / 4).backward()
    expected = mechanisms.chunk_gradient_norms(student_lp, teacher_lp, 5.0)["reverse_calm"]
    assert float(probe.value()) == pytest.approx(expected, rel=1e-5)
    # token level: TIDAL's row-chunked loss allows one backward, which the probe shares
    logits_param = torch.randn(5, 30, generator=g, requires_grad=True)
    student, teacher = logits_param[:, :20], torch.randn(5, 20, generator=g)
    lam = torch.full((5,), 0.5)
    distill = tidal_loss(student, teacher, lam, 2.0)
    probe = mechanisms.GradientNormProbe(distill, student)
    (logits_param.logsumexp(-1).sum() + 0.5 * distill).backward()
    reference = student.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tidal_loss(reference, teacher, lam, 2.0), reference)
    assert float(probe.value()) == pytest.approx(float(grad.norm()), rel=1e-5)


def test_reverse_calm_norm_meets_its_analytic_bound_where_calm_explodes():
    temperature, chunks = 5.0, 4
    # The extreme case: the teacher at the clamp (t_c = eps), the student nearly sure.
    student_lp = torch.full((chunks,), temperature * math.log(0.999))
    teacher_lp = torch.full((chunks,), -1e4)
    norms = mechanisms.chunk_gradient_norms(student_lp, teacher_lp, temperature)
    bound = LOGIT_BOUND / (temperature * math.sqrt(chunks))
    assert norms["reverse_calm"] <= bound
    assert norms["reverse_calm"] == pytest.approx(0.999 * bound, rel=1e-3)  # tight
    assert norms["calm"] > 50 * bound  # (s - t) / ((1 - s) T) per chunk, s -> 1
    with torch.inference_mode():  # validation's mode: autograd on detached copies
        inside = mechanisms.chunk_gradient_norms(student_lp, teacher_lp, temperature)
    assert inside == norms
