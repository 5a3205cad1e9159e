"""User errors of ``evaluate`` through the real CLI: one line naming the file and line or
the argument, exit status 2, and checked before the model is loaded (the --model given
here does not exist: had it been loaded first, that would be the error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tide_lightning.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GSM8K_ROW = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}


def _evaluate(tmp_path: Path, *args: str) -> int:
    model = tmp_path / "no-model-here"
    return main(["evaluate", "--model", str(model), "--out", str(tmp_path / "out"), *args])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one(tmp_path, capsys, limit):
    assert _evaluate(tmp_path, "--tasks", "humaneval", "--limit", limit) == 2
    assert _error(capsys) == f"error: --limit must be >= 1 (items per task), got {limit}"


def test_unknown_task_before_the_model_loads(tmp_path, capsys):
    assert _evaluate(tmp_path, "--tasks", "humaneval,mmlu") == 2
    assert _error(capsys).startswith("error: unknown task 'mmlu'; known: gsm8k, humaneval, mbpp")


def test_malformed_jsonl_names_file_and_line(tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    good = json.dumps(GSM8K_ROW)
    data.write_text(f'{good}\n\n{good}\n{{"question": "cut off\n{good}\n')
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", f"gsm8k={data}") == 2
    assert _error(capsys).startswith(f"error: {data}:4: not valid JSON")


def test_malformed_json_names_the_line_in_the_file(tmp_path, capsys):
    data = tmp_path / "mbpp.json"
    data.write_text('[\n  {"task_id": 11,\n   "text": "x"\n   "code": "y"}\n]\n')
    assert _evaluate(tmp_path, "--tasks", "mbpp", "--data", f"mbpp={data}") == 2
    assert _error(capsys).startswith(f"error: {data}:4: not valid JSON")


def test_row_that_is_not_an_object(tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps(GSM8K_ROW) + "\n[1, 2]\n")
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", f"gsm8k={data}") == 2
    assert _error(capsys) == f"error: {data}:2: expected a JSON object, got list"


def test_record_without_a_needed_field(tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "no answer"}) + "\n")
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", f"gsm8k={data}") == 2
    assert _error(capsys) == f"error: gsm8k data {data}: a record has no field 'answer'"


def test_empty_file_missing_file_and_bad_data_argument(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", f"gsm8k={empty}") == 2
    assert _error(capsys) == f"error: gsm8k data {empty}: no items"
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", f"gsm8k={tmp_path / 'x'}") == 2
    assert _error(capsys) == f"error: --data gsm8k={tmp_path / 'x'}: no such file"
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", "gsm8k") == 2
    assert _error(capsys) == "error: --data expects TASK=PATH, got 'gsm8k'"
    assert _evaluate(tmp_path, "--tasks", "gsm8k") == 2
    assert "give --data gsm8k=PATH" in _error(capsys)


def test_valid_tasks_get_as_far_as_the_model(tmp_path, capsys):
    data = FIXTURES / "gsm8k_sample.jsonl"
    assert _evaluate(tmp_path, "--tasks", "gsm8k", "--data", f"gsm8k={data}", "--limit", "1") == 2
    assert "no-model-here" in _error(capsys)  # every task check passed; the model is next


def test_evaluate_refuses_a_task_without_items(tmp_path):
    from tide_lightning.errors import UserError
    from tide_lightning.evaluation.runner import evaluate
    from tide_lightning.evaluation.task import Task

    empty = Task("gsm8k", (), lambda sample, completion: {}, ("strict",))
    with pytest.raises(UserError, match="task gsm8k has no items"):
        evaluate(lambda prompts: [], [empty], tmp_path, show_progress=False)
