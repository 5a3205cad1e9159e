"""``evaluate --suite paper``: the published task list, the paper table, offline plumbing."""

from __future__ import annotations

import json

import pytest

from tide_lightning.cli import main
from tide_lightning.evaluation import paper_suite
from tide_lightning.evaluation.paper_suite import (
    PAPER_TASKS,
    PUBLISHED,
    PUBLISHED_COLUMNS,
    run_paper_suite,
    steps_per_block,
)

# scripts/eval_all.sh: task max_new_tokens steps num_fewshot
PUBLISHED_SCRIPT = {
    "mmlu_generative_dream": (3, 3, 0),
    "mmlu_pro": (256, 256, 0),
    "hellaswag_gen": (3, 3, 0),
    "gsm8k_cot": (256, 256, 0),
    "bbh": (256, 256, 3),
    "minerva_math": (256, 256, 0),
    "humaneval_instruct": (256, 256, 0),
    "mbpp_instruct": (256, 256, 0),
}


def test_the_task_list_is_eval_all_sh():
    assert {t.task: (t.max_new_tokens, t.steps, t.num_fewshot) for t in PAPER_TASKS} == (
        PUBLISHED_SCRIPT
    )
    assert [t.benchmark for t in PAPER_TASKS] == [b for b in PUBLISHED if b != "Average"]
    assert {t.task for t in PAPER_TASKS if t.unsafe_code} == {"humaneval_instruct", "mbpp_instruct"}


def test_published_columns_are_spec_section_1():
    assert PUBLISHED_COLUMNS[4] == "TIDE-Cross (B)"
    assert PUBLISHED["GSM8K"][4] == 45.03 and PUBLISHED["Average"][4] == 30.79
    # Each published column's average is the mean of its eight rows (to rounding).
    for c in range(len(PUBLISHED_COLUMNS)):
        rows = [v[c] for b, v in PUBLISHED.items() if b != "Average"]
        assert sum(rows) / 8 == pytest.approx(PUBLISHED["Average"][c], abs=0.011)


def test_one_token_per_step_as_published():
    assert {steps_per_block(t) for t in PAPER_TASKS} == {32}


class FakeLmEval:
    """A stand-in for lm-eval's evaluator with one two-document exact-match task.

    It does what lm-eval does with our model: renders each question with the model's
    chat template, asks ``generate_until`` with the task's own ``max_gen_toks`` and stop
    sequences, and scores the completions.
    """

    docs = [("What is 2 + 2?", "4"), ("What is 3 + 3?", "6")]

    def __init__(self):
        self.calls = []

    def __call__(self, task, lm, limit):
        from lm_eval.api.instance import Instance

        docs = self.docs[:limit]
        prompts = [lm.apply_chat_template([{"role": "user", "content": q}]) for q, _ in docs]
        requests = [
            Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 999}), i)
            for i, p in enumerate(prompts)
        ]
        completions = lm.generate_until(requests)
        self.calls.append((task.task, prompts, completions))
        right = sum(c.strip() == a for c, (_, a) in zip(completions, docs, strict=True))
        return {"exact_match,flexible-extract": right / len(docs), "exact_match_stderr,x": 0.1}


def test_suite_runs_present_tasks_through_our_model_and_skips_the_rest(tmp_path):
    pytest.importorskip("lm_eval")
    from tide_lightning.evaluation.lm_eval_adapter import register

    seen_lengths = []

    def make_lm(task):
        def generate(prompts):  # no max_new_tokens: the published length is kept
            seen_lengths.append(task.max_new_tokens)
            return ["4\nmore" if "2 + 2" in p else "5" for p in prompts]

        return register()(generate_fn=generate, batch_size=2)

    fake = FakeLmEval()
    rows = run_paper_suite(
        make_lm, tmp_path, limit=2, runner=fake,
        present=lambda t: t.task == "gsm8k_cot", missing=lambda: None,
    )  # fmt: skip
    assert [r.task.task for r in rows] == [t.task for t in PAPER_TASKS]
    gsm8k = rows[0]
    assert gsm8k.score == pytest.approx(50.0) and gsm8k.metric == "exact_match,flexible-extract"
    assert [c[0] for c in fake.calls] == ["gsm8k_cot"] and seen_lengths == [256]
    assert "<|im_start|>user\nWhat is 2 + 2?" in fake.calls[0][1][0]
    assert all(r.skipped and "is not in" in r.skipped for r in rows[1:])
    hellaswag = next(r for r in rows if r.task.task == "hellaswag_gen")
    assert "Rowan/hellaswag" in hellaswag.skipped and "--include-path" in hellaswag.skipped

    table = (tmp_path / "paper_table.md").read_text()
    assert (
        "| GSM8K | 59.60 | 45.56 | 43.97 | 48.98 | 45.03 | 48.60 | 49.89 | 52.24 | 50.00 |" in table
    )
    assert "| MATH |" in table and "skipped |" in table
    assert "| Average | 40.91 |" in table and "n/a (1 of 8 rows)" in table
    assert "first 2 documents per task" in table
    saved = json.loads((tmp_path / "paper_results.json").read_text())
    assert saved["rows"][0]["published"]["TIDE-Cross (B)"] == 45.03
    assert saved["rows"][0]["score"] == pytest.approx(50.0)


def test_without_lm_eval_every_present_row_says_why(tmp_path):
    rows = run_paper_suite(
        lambda t: None, tmp_path, runner=lambda *a: pytest.fail("must not run"),
        present=lambda t: True, missing=lambda: "lm-eval's evaluator does not import here (x)",
    )  # fmt: skip
    assert all(r.score is None and "does not import" in r.skipped for r in rows)


def test_cli_suite_paper_runs_end_to_end_offline(tmp_path, small_bpe, monkeypatch, capsys):
    """``evaluate --suite paper --limit 2`` on a tiny model with no dataset on the machine."""
    from tide_lightning.models import build_student

    student = build_student(
        vocab_size=512, hidden_size=32, num_layers=1, num_heads=4,
        mask_token_id=small_bpe.mask_token_id, seed=0,
    )  # fmt: skip
    student.model.config.block_size = 8
    student.save_pretrained(tmp_path / "model", small_bpe)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    out = tmp_path / "eval"
    code = main(
        ["evaluate", "--suite", "paper", "--model", str(tmp_path / "model"), "--limit", "2",
         "--out", str(out), "--device", "cpu"]
    )  # fmt: skip
    assert code in (0, None)
    printed = capsys.readouterr().out
    assert (out / "paper_table.md").read_text() in printed
    assert printed.count("skipped") >= 16  # eight rows and eight reasons
    assert "openai/gsm8k" in printed and str(tmp_path / "hf" / "datasets") in printed


def test_cli_suite_refuses_tasks(tmp_path, capsys):
    code = main(["evaluate", "--suite", "paper", "--model", str(tmp_path), "--tasks", "mbpp"])
    assert code == 2 and "drop --tasks" in capsys.readouterr().err


def test_suite_model_decodes_the_published_length(monkeypatch):
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from lm_eval.api.instance import Instance

    from tide_lightning.generation import text

    made, calls = [], []

    def fake_text_generate_fn(student, tokenizer, chat, batch_size, seed, **sampling):
        made.append(sampling | {"chat": chat})

        def fn(prompts, max_new_tokens=None):
            calls.append(max_new_tokens)
            return ["x" for _ in prompts]

        return fn

    monkeypatch.setattr(text, "text_generate_fn", fake_text_generate_fn)
    loaded = SimpleNamespace(student=None, tokenizer=None)
    task = next(t for t in PAPER_TASKS if t.task == "hellaswag_gen")
    lm = paper_suite.suite_model(loaded, batch_size=1)(task)
    request = ("The quick", {"until": [], "max_gen_toks": 64})
    assert lm.generate_until([Instance("generate_until", {}, request, 0)]) == ["x"]
    assert made == [
        {"block_size": 32, "steps_per_block": 32, "temperature": 0.0, "max_new_tokens": 3,
         "chat": False}
    ]  # fmt: skip
    assert calls == [None]  # the task's max_gen_toks (64) does not override the 3 tokens


def test_lm_eval_runner_passes_the_published_settings(monkeypatch):
    import sys
    import types

    seen = {}

    def simple_evaluate(**kwargs):
        seen.update(kwargs)
        return {
            "results": {"bbh": {"alias": "bbh", "exact_match,get-answer": 0.25}},
            "groups": {"bbh": {"exact_match,get-answer": 0.3, "exact_match_stderr,get-answer": 1}},
        }

    class TaskManager:
        def __init__(self, include_path=None):
            seen["include_path"] = include_path

    monkeypatch.setitem(
        sys.modules, "lm_eval.evaluator", types.SimpleNamespace(simple_evaluate=simple_evaluate)
    )
    monkeypatch.setitem(
        sys.modules, "lm_eval.tasks", types.SimpleNamespace(TaskManager=TaskManager)
    )
    bbh = next(t for t in PAPER_TASKS if t.task == "bbh")
    scores = paper_suite.lm_eval_runner("/tasks/fork")(bbh, "LM", 2)
    assert seen["tasks"] == ["bbh"] and seen["num_fewshot"] == 3 and seen["limit"] == 2
    assert seen["apply_chat_template"] is True and seen["fewshot_as_multiturn"] is False
    assert seen["confirm_run_unsafe_code"] is False and seen["model"] == "LM"
    assert seen["include_path"] == "/tasks/fork"
    # The task-level entry wins over the group aggregate of the same name; strings dropped.
    assert paper_suite.pick_metric(bbh, scores) == ("exact_match,get-answer", 0.25)
