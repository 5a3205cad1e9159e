"""The evaluate summary records what produced it: model and hash, sampler, data, code, date."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tide_lightning.cli import main
from tide_lightning.generation.export import export_checkpoint, file_sha256
from tide_lightning.models import build_student

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_evaluate_records_model_sampler_data_and_why_fewer_items(tmp_path, small_bpe):
    student = build_student(
        vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        mask_token_id=small_bpe.mask_token_id, seed=1,
    )  # fmt: skip
    small_bpe.save_pretrained(str(tmp_path / "student_tokenizer"))
    (tmp_path / "checkpoints").mkdir()
    checkpoint = {
        "state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
        "student_hf_config": student.model.config.to_dict(),
        "student_mask_token_id": small_bpe.mask_token_id,
        "hyper_parameters": {"objective": {"block_size": 8}},
    }
    torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    model = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "export")
    out = tmp_path / "eval"
    argv = [
        "evaluate", "--model", str(model), "--tasks", "mbpp", "--limit", "5",
        "--data", f"mbpp={FIXTURES / 'mbpp_sample.jsonl'}", "--out", str(out),
        "--max-new-tokens", "4", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["model"]["path"] == str(model.resolve())
    weights = model / "model.safetensors"
    assert record["model"]["sha256"] == {"model.safetensors": file_sha256(weights)}
    assert record["sampler"]["max_new_tokens"] == 4 and record["sampler"]["block_size"] == 8
    mbpp = record["tasks"]["mbpp"]
    assert mbpp["data"] == str((FIXTURES / "mbpp_sample.jsonl").resolve())
    assert (mbpp["items"], mbpp["limit"]) == (3, 5)
    assert mbpp["fewer_than_limit"] == "the data holds only 3 items"
    assert record["code_version"].startswith(("git ", "tide_lightning "))
    assert record["date"].startswith("20")
    assert (out / "summary.md").read_text().startswith("- model: ")


def test_lm_eval_adapter_says_what_to_install_when_a_dependency_is_missing(monkeypatch):
    import sys

    import pytest

    from tide_lightning.evaluation import lm_eval_adapter

    monkeypatch.setitem(sys.modules, "lm_eval.evaluator", None)  # import raises
    with pytest.raises(SystemExit, match=r"is missing: run make install-eval \(or: pip install"):
        lm_eval_adapter.main()
