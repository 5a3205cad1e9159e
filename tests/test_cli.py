"""The sample / evaluate / bench / export commands through the real CLI, on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from tide_lightning.cli import COMMANDS, build_parser, main
from tide_lightning.generation.bench import Measurement, format_table, measure, useful_tokens
from tide_lightning.generation.sampling import generate
from tide_lightning.generation.text import format_order, render_prompt, text_generate_fn
from tide_lightning.models import build_student


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small_bpe):
    """An exported student directory (what ``export`` writes) with block size 8."""
    out = tmp_path_factory.mktemp("student")
    student = build_student(
        vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        mask_token_id=small_bpe.mask_token_id, seed=2,
    )  # fmt: skip
    student.model.config.block_size = 8
    student.save_pretrained(out, small_bpe)
    return out


def test_tool_commands_are_registered():
    build_parser()
    assert {"sample", "evaluate", "bench", "export"} <= set(COMMANDS)


def test_render_prompt_uses_the_chat_template_without_thinking(small_bpe):
    chat = small_bpe.decode(render_prompt(small_bpe, "What is 2 + 2?", chat=True))
    assert chat.startswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant")
    assert chat.endswith("<think>\n\n</think>\n\n")
    raw = render_prompt(small_bpe, "What is 2 + 2?", chat=False)
    assert raw == small_bpe.encode("What is 2 + 2?", add_special_tokens=False)


def test_format_order_groups_positions_by_step(small_bpe):
    tokens = small_bpe.encode("ab cd ef", add_special_tokens=False)[:3]
    text = format_order(small_bpe, tokens, [1, 0, -1])
    first, second = text.splitlines()
    assert first == f"step    0: +1 {small_bpe.decode([tokens[1]])!r}"
    assert second.startswith("step    1: +0 ")


def test_text_generate_fn_matches_the_sampler(model_dir):
    from tide_lightning.generation.export import load_any

    loaded = load_any(model_dir, dtype=torch.float32, device="cpu")
    tok = loaded.tokenizer
    fn = text_generate_fn(loaded.student, tok, batch_size=2, max_new_tokens=16, block_size=8)
    prompts = ["def f(x):", "The quick brown", "Numbers like"]
    texts = fn(prompts)
    ids = [render_prompt(tok, p, chat=False) for p in prompts]
    out = generate(loaded.student, ids, 16, 8, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    for row, text in enumerate(texts):
        tokens = out.tokens[row].tolist()
        tokens = tokens[: tokens.index(tok.eos_token_id)] if tok.eos_token_id in tokens else tokens
        assert text == tok.decode(tokens, skip_special_tokens=True)


def test_sample_command_prints_completions_and_order(model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def fibonacci(n\n\nThe quick\n")
    argv = ["sample", "--model", str(model_dir), "--file", str(prompts), "hello",
            "--max-new-tokens", "8", "--show-order", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "### prompt 0: hello" in out and "### prompt 2: The quick" in out
    assert out.count("--- denoising order (") == 3
    assert "step    7: +" in out  # block size 8 from the config: one token per step
    for prefix in ("per_block", "per_step"):  # the comparison modes print the same
        assert main([*argv, "--prefix", prefix]) == 0
        assert capsys.readouterr().out == out


def test_export_command_writes_a_loadable_directory(tmp_path, small_bpe, capsys):
    student = build_student(
        vocab_size=512, hidden_size=32, num_layers=1, num_heads=4,
        mask_token_id=small_bpe.mask_token_id, seed=0,
    )  # fmt: skip
    small_bpe.save_pretrained(str(tmp_path / "student_tokenizer"))
    (tmp_path / "checkpoints").mkdir()
    torch.save(
        {
            "state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
            "student_hf_config": student.model.config.to_dict(),
            "student_mask_token_id": small_bpe.mask_token_id,
            "hyper_parameters": {"objective": {"block_size": 16}},
        },
        tmp_path / "checkpoints" / "last.ckpt",
    )
    out_dir = tmp_path / "hf"
    assert main(["export", str(tmp_path / "checkpoints" / "last.ckpt"), str(out_dir)]) == 0
    assert "block size 16" in capsys.readouterr().out
    assert json.loads((out_dir / "config.json").read_text())["model_type"] == "a2d-qwen3"
    assert main(["export", str(tmp_path / "missing.ckpt"), str(out_dir)]) == 2


def test_bench_command_prints_the_three_modes(model_dir, capsys):
    argv = ["bench", "--model", str(model_dir), "--new-tokens", "16", "--warmup", "0",
            "--repeats", "1", "--ignore-eos", "--device", "cpu",
            "--prefix-baselines", "per_block", "per_step"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for mode in (
        "bd3lm 1 token/step",
        "bd3lm threshold 0.9",
        "per block",
        "per step",
        "HF generate",
    ):
        assert mode in out
    assert "| 16 |" in out  # every mode generated all 16 tokens


def test_evaluate_command_scores_gsm8k_from_a_local_file(model_dir, tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"
    rows = [{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}] * 2
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["evaluate", "--model", str(model_dir), "--tasks", "gsm8k,", "--data",
            f"gsm8k={data}", "--out", str(tmp_path / "eval"), "--max-new-tokens", "8",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "| gsm8k | strict |" in capsys.readouterr().out
    records = (tmp_path / "eval" / "gsm8k.jsonl").read_text().splitlines()
    assert len(records) == 2 and "<|im_start|>" in json.loads(records[0])["prompt"]


def test_useful_tokens_stop_at_the_first_eos():
    tokens = torch.tensor([[1, 2, 9, 3], [4, 5, 6, 7], [9, 9, 1, 1]])
    assert useful_tokens(tokens, 9) == 2 + 4 + 0
    assert useful_tokens(tokens, None) == 12


def test_measure_keeps_the_fastest_repeat_and_formats_ratios():
    calls = []

    def run():
        calls.append(1)
        return 10, 2.0

    (m,) = measure({"x": run}, torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and m.tokens == 10 and m.tokens_per_step == 2.0 and m.seconds > 0
    table = format_table([Measurement("a", 100, 2.0), Measurement("ar", 100, 1.0)], "ar")
    assert "| a | 100 | 2.000 | 50.0 | 0.50 | - | n/a |" in table
