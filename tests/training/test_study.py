"""The demo's corpus and teacher cache, its table, and the study's grid, resume and report."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
import torch

from tide_lightning.config import load_config
from tide_lightning.errors import UserError
from tide_lightning.training import demo, study
from tide_lightning.training.demo_corpus import program, write_corpus

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_corpus_is_deterministic_and_code(tmp_path):
    a = write_corpus(tmp_path / "a", train_docs=20, val_docs=5)
    b = write_corpus(tmp_path / "b", train_docs=20, val_docs=5)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    train = [json.loads(line)["text"] for line in a[0].read_text().splitlines()]
    val = [json.loads(line)["text"] for line in a[1].read_text().splitlines()]
    assert len(train) == 20 and len(val) == 5 and not set(train) & set(val)
    for text in train:
        compile(text, "<generated>", "exec")  # every program is valid Python
    source = program(random.Random(3))
    name = source.split("(")[0].removeprefix("def ")
    assert f"print({name}(" in source  # the call copies the function's name


def test_teacher_key_follows_config_and_corpus_not_the_folder(tmp_path):
    corpus = write_corpus(tmp_path / "one" / "corpus", train_docs=10, val_docs=2)
    moved = write_corpus(tmp_path / "two" / "corpus", train_docs=10, val_docs=2)
    configs = {
        n: demo._teacher_config(CONF / "demo.yaml", n, corpus, []) for n in ("bpe", "unigram")
    }
    key = demo.teacher_key(configs, corpus)
    again = {n: demo._teacher_config(CONF / "demo.yaml", n, moved, []) for n in ("bpe", "unigram")}
    assert demo.teacher_key(again, moved) == key  # another out folder, same corpus
    longer = {
        n: demo._teacher_config(CONF / "demo.yaml", n, corpus, demo.steps_overrides(7))
        for n in ("bpe", "unigram")
    }
    assert demo.teacher_key(longer, corpus) != key
    assert longer["bpe"].trainer.max_steps == 7 * demo.TEACHER_STEP_FACTOR
    corpus[0].write_text(corpus[0].read_text() + '{"text": "x = 1\\n"}\n')
    assert demo.teacher_key(configs, corpus) != key


def test_teacher_configs_are_bigger_and_trained_longer_than_students(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", train_docs=10, val_docs=2)
    student = load_config(CONF / "demo.yaml")
    bpe = demo._teacher_config(CONF / "demo.yaml", "bpe", corpus, [])
    unigram = demo._teacher_config(CONF / "demo.yaml", "unigram", corpus, [])
    assert bpe.student.hidden_size > student.student.hidden_size
    assert bpe.trainer.max_steps == 2 * student.trainer.max_steps
    assert (bpe.student.tokenizer.source, unigram.student.tokenizer.source) == ("bpe", "unigram")
    assert bpe.data.sources[0].path == str(corpus[0].resolve())


def test_cross_students_get_the_cross_defaults(tmp_path):
    teachers = demo.Teachers(tmp_path / "bpe", tmp_path / "unigram", {}, "k", False)
    cross = demo.student_config(
        CONF / "demo.yaml", teachers, tmp_path, "cross", "tide_cross", "unigram"
    )
    shared = demo.student_config(CONF / "demo.yaml", teachers, tmp_path, "shared", "kl", "bpe")
    assert cross.objective.temperature == 5.0 and shared.objective.temperature == 2.0
    assert cross.teacher.path == str(tmp_path / "unigram")
    assert cross.student.tokenizer.source == str(tmp_path / "bpe")


def test_study_base_config_keeps_the_demo_teachers():
    a, b = load_config(CONF / "demo.yaml"), load_config(CONF / "study.yaml")
    assert dataclasses.replace(b, run_dir=a.run_dir) == a


def test_gap_closed_and_table():
    assert demo.gap_closed(2.5, 3.0, 2.0) == pytest.approx(0.5)
    assert math.isnan(demo.gap_closed(2.5, 2.0, 3.0))  # no gap: nothing to close
    table = {
        "teacher_bpe": {"val/ce": 2.0},
        "ce": {"val/ce": 3.0, "val/kl_to_teacher": 0.8, "val/chunk_kl": 0.1},
        "tide_shared": {"val/ce": 2.75, "val/kl_to_teacher": 0.5},
    }
    text = demo.format_table(table, {"tide_shared": {"val/ce": 0.01}})
    lines = text.splitlines()
    assert lines[2] == "| teacher_bpe | 2.000 | - | - | - |"
    assert lines[3] == "| ce | 3.000 | 0.800 | 0.100 | - |"
    assert lines[4] == "| tide_shared | 2.750 +- 0.010 | 0.500 | - | +25% |"


GRID = """
seeds: [0, 1, 2]
variants:
  ce: {pipeline: shared, variant: ce}
  t1: {pipeline: shared, variant: tide_shared, overrides: [objective.temperature=1.0]}
  tc: {pipeline: cross, variant: tide_cross, student_docs: 50}
quick: {seeds: [0], steps: 3, teacher_steps: 2, variants: [ce, tc]}
"""


def test_grid_and_quick(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    full, quick = study.load_grid(path), study.load_grid(path, quick=True)
    assert [v.name for v in full.variants] == ["ce", "t1", "tc"] and full.seeds == (0, 1, 2)
    assert full.variants[1].overrides == ("objective.temperature=1.0",)
    assert full.variants[2].spec == ("cross", "tide_cross", "unigram")
    assert (full.variants[0].student_docs, full.variants[2].student_docs) == (None, 50)
    assert [v.name for v in quick.variants] == ["ce", "tc"]
    assert (quick.seeds, quick.steps, quick.teacher_steps) == ((0,), 3, 2)
    path.write_text(GRID.replace("variants: [ce, tc]", "variants: [ce, nope]"))
    with pytest.raises(UserError, match="nope"):
        study.load_grid(path, quick=True)
    with pytest.raises(UserError, match="does not exist"):
        study.load_grid(tmp_path / "missing.yaml")


def test_shipped_grid_overrides_load():
    grid = study.load_grid(study.GRID)
    assert len(grid.variants) >= 10 and grid.seeds == (0, 1, 2)
    teachers = demo.Teachers(Path("/t/bpe"), Path("/t/unigram"), {}, "k", False)
    for v in grid.variants:  # every override is a real, valid key
        pipeline, variant, teacher = v.spec
        config = demo.student_config(
            CONF / "study.yaml", teachers, Path("/r"), pipeline, variant, teacher, v.overrides
        )
        assert config.objective.variant == variant


def test_shipped_grid_starts_with_the_demo_students():
    """The study's first rows are the demo's students with the demo's settings."""
    grid = study.load_grid(study.GRID)
    rows = {v.name: (*v.spec, v.overrides) for v in grid.variants[: len(demo.STUDENTS)]}
    assert rows == {name: (*spec[:3], tuple(spec[3])) for name, spec in demo.STUDENTS.items()}
    assert demo.Teachers.kind("bpe") == "tiny_moe_clean_first"  # WeDLM's layout
    assert demo.Teachers.kind("unigram") == "tiny_moe"  # LLaDA2's layout


@pytest.mark.parametrize(
    "pipeline,name,kind",
    [("shared", "bpe", "tiny_moe_clean_first"), ("cross", "unigram", "tiny_moe")],
)
def test_measurements_load_each_teacher_in_its_layout(tmp_path, monkeypatch, pipeline, name, kind):
    """The study's after-training measurements read a teacher as its students did (a bug:
    the gradient shares once read the clean-first BPE teacher bidirectionally)."""
    import tide_lightning.models.frozen as frozen
    import tide_lightning.training.builders as builders

    loaded = []
    monkeypatch.setattr(frozen, "load_teacher", lambda *a, **k: loaded.append((a, k)) or "T")

    class FakeData:
        def setup(self, stage):
            pass

        def val_dataloader(self):
            return ["b0", "b1"]

    monkeypatch.setattr(
        builders, "build_run", lambda config: type("R", (), {"datamodule": FakeData()})
    )
    teachers = demo.Teachers(tmp_path / "bpe", tmp_path / "unigram", {}, "k", False)
    variant = "tide_shared" if pipeline == "shared" else "tide_cross"
    config, batches, teacher = study._validation_setup(
        CONF / "study.yaml", teachers, tmp_path, pipeline, variant, name
    )
    assert (batches, teacher) == (["b0", "b1"], "T")
    ((args, kwargs),) = loaded
    assert args == (teachers.path(name), kind) and kwargs == {"block_size": 16}
    assert config.teacher.kind == kind


class Stopped(Exception):
    """Stands for the study being interrupted (Ctrl-C, a lost job)."""


def test_study_resumes_and_reports(tmp_path, monkeypatch):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    calls, stopped = [], []
    teachers = demo.Teachers(
        tmp_path / "bpe", tmp_path / "unigram", {"bpe": {"val/ce": 2.0}}, "k", False
    )

    def fake_train(config_path, teachers, out_dir, run_dir, spec, overrides, student_docs):
        seed = int(next(o for o in overrides if o.startswith("seed="))[5:])
        calls.append((run_dir.name, spec[1]))
        if len(calls) == 4 and not stopped:
            stopped.append(True)
            raise Stopped  # the study is stopped during its fourth run
        return {"val/ce": 3.0 - 0.1 * seed - (0.5 if spec[1] != "ce" else 0), "val/chunk_kl": 0.2}

    monkeypatch.setattr(demo, "ensure_teachers", lambda *a, **k: teachers)
    monkeypatch.setattr(demo, "train_student", fake_train)
    monkeypatch.setattr(study, "measure_mechanisms", lambda *a: "| t |")
    monkeypatch.setattr(study, "measure_calm_gradients", lambda *a: "| student |")
    monkeypatch.setattr(study, "measure_term_gradients", lambda *a: "| student |")
    kwargs = {"grid_path": path, "out": str(tmp_path / "study"), "teachers_dir": str(tmp_path)}
    with pytest.raises(Stopped):
        study.run_study(CONF / "study.yaml", **kwargs)
    assert [c[0] for c in calls] == ["ce-s0", "ce-s1", "ce-s2", "t1-s0"]
    calls.clear()
    results = study.run_study(CONF / "study.yaml", **kwargs)
    assert [c[0] for c in calls] == ["t1-s0", "t1-s1", "t1-s2", "tc-s0", "tc-s1", "tc-s2"]
    assert [r["val/ce"] for r in results["ce"]] == pytest.approx([3.0, 2.9, 2.8])
    report = (tmp_path / "study" / "study.md").read_text()
    assert "| ce | 2.900 +- 0.100 | - | 0.200 +- 0.000 | - |" in report
    assert "| t1 | 2.400 +- 0.100 | - | 0.200 +- 0.000 | +56% |" in report  # 0.5 / 0.9
    assert (tmp_path / "study" / "study.png").stat().st_size > 1000
    assert (tmp_path / "study" / "runs" / "tc-s2" / "result.json").is_file()


def test_quick_study_runs_end_to_end(tmp_path):
    """``study --quick`` for real: tiny teachers, two seeds of three variants (about 30 s)."""
    from tide_lightning.cli import main

    out, teachers = tmp_path / "study", tmp_path / "demo"
    args = ["study", "--config", str(CONF / "study.yaml"), "--quick"]
    assert main([*args, "--out", str(out), "--teachers", str(teachers)]) == 0
    report = (out / "study.md").read_text()
    for name in ("teacher_bpe", "| ce |", "| tide_shared |", "| tide_cross |"):
        assert name in report
    assert len(list((out / "runs").glob("*/result.json"))) == 6
    assert list((out / "runs" / "tide_shared-s0" / "tensorboard").glob("events*"))


class LeftNeighbourTeacher:
    """Knows a token exactly when the token to its left is visible, else guesses uniformly."""

    mask_token_id = 0

    def __init__(self, x0: torch.Tensor, vocab: int) -> None:
        self.x0, self.vocab = x0, vocab

    def logits(self, ids, logits_at, attention_mask=None, clean_ids=None):
        x0 = torch.cat([self.x0] * (ids.shape[0] // self.x0.shape[0]))
        seen = torch.zeros_like(logits_at)
        seen[:, 1:] = ids[:, :-1] != self.mask_token_id
        out = torch.zeros(*ids.shape, self.vocab)
        out.scatter_(-1, x0[..., None], 10.0 * seen[..., None].float())
        return out[logits_at]


def test_teacher_by_t_shows_what_compdemo_reveals():
    from tide_lightning.training.mechanisms import mechanism_table, teacher_by_t

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(1, 50, (40, 64), generator=gen)
    batch = {"input_ids": x0, "maskable": torch.ones_like(x0, dtype=torch.bool)}
    measured = teacher_by_t(LeftNeighbourTeacher(x0, 50), [batch], bins=5)
    t = measured["centers"]
    # The left neighbour is visible with probability 1 - t in one pass, 1 - t/2 with CompDemo.
    assert measured["acc_plain"] == pytest.approx((1 - t).tolist(), abs=0.06)
    assert measured["acc_compdemo"] == pytest.approx((1 - t / 2).tolist(), abs=0.06)
    gain = measured["acc_compdemo"] - measured["acc_plain"]
    assert gain[-1] > gain[0] + 0.2  # CompDemo helps most under heavy masking
    assert (measured["nll_compdemo"] < measured["nll_plain"]).all()
    assert measured["count"].sum() > 0
    table = mechanism_table(measured)
    row = table.splitlines()[2]  # t = 0.1: lambda_t = lambda_train(p) * (1 - t)
    assert row.startswith("| 0.1 |") and row.endswith("| 0.450 | 0.810 |")


def test_reverse_calm_gradient_stays_bounded_where_calm_explodes():
    from tide_lightning.training.mechanisms import chunk_gradient_norms

    # Per chunk, with respect to LP_c (what reaches the logits; ds/dLP = s / T):
    # CALM (s - t) / ((1 - s) T), unbounded as s -> 1; Reverse CALM -logit(t) s / T.
    lp = torch.log(torch.tensor([0.9999, 0.9999]))
    teacher = torch.log(torch.tensor([0.5, 0.5]))  # an unsure (badly aligned) chunk
    sure = chunk_gradient_norms(lp, teacher, 1.0)
    assert sure["calm"] == pytest.approx(0.4999 / 1e-4 / 2 * math.sqrt(2), rel=1e-2)
    assert sure["reverse_calm"] == pytest.approx(0.0, abs=1e-6)  # logit(0.5) = 0
    likely = chunk_gradient_norms(
        torch.log(torch.tensor([0.8, 0.8])), torch.log(torch.tensor([0.9, 0.9])), 1.0
    )
    expected = math.log(9) * 0.8 / 2 * math.sqrt(2)  # mean over C = 2 chunks, L2 norm
    assert likely["reverse_calm"] == pytest.approx(expected, rel=1e-4)


def test_term_gradient_norms_split_the_two_terms():
    from tide_lightning.method.objective import ObjectiveConfig
    from tide_lightning.models.student import build_student
    from tide_lightning.training.mechanisms import term_gradient_norms

    student = build_student(50, 16, 1, 2, mask_token_id=0, seed=0)
    x0 = torch.randint(1, 50, (4, 32), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": x0, "maskable": torch.ones_like(x0, dtype=torch.bool)}
    teacher = LeftNeighbourTeacher(x0, 50)
    norms = {}
    for variant in ("ce", "tide_shared"):
        objective = ObjectiveConfig(variant=variant, block_size=16).resolved("shared")
        gen = torch.Generator().manual_seed(0)
        norms[variant] = term_gradient_norms(student, teacher, batch, objective, 1.0, gen)
    assert norms["ce"]["distill"] == 0.0 and norms["ce"]["ce"] > 0
    assert norms["tide_shared"]["distill"] > 0
    assert norms["tide_shared"]["ce"] == pytest.approx(norms["ce"]["ce"])  # same masks
