"""Export: a checkpoint (file, FSDP-sharded, DeepSpeed dir) -> an HF dir that samples alike."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tide_lightning.generation.export import (
    export_checkpoint,
    load_any,
    load_training_checkpoint,
    student_from_checkpoint,
    student_weights,
)
from tide_lightning.generation.sampling import generate
from tide_lightning.models import build_student, load_student


def make_run(tmp_path: Path, tokenizer, block_size: int = 8):
    """A run directory as training leaves it: student tokenizer and a checkpoint dict."""
    student = build_student(
        vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        mask_token_id=tokenizer.mask_token_id, seed=1,
    ).eval()  # fmt: skip
    tokenizer.save_pretrained(str(tmp_path / "student_tokenizer"))
    checkpoint = {
        "state_dict": {f"student.{k}": v.clone() for k, v in student.state_dict().items()},
        "student_hf_config": student.model.config.to_dict(),
        "student_mask_token_id": tokenizer.mask_token_id,
        "hyper_parameters": {"objective": {"block_size": block_size}},
        "global_step": 3,
    }
    (tmp_path / "checkpoints").mkdir()
    return student, checkpoint


def sample(student, tokenizer, block_size=8):
    prompts = [tokenizer.encode("def fibonacci(n"), tokenizer.encode("The quick")]
    out = generate(student, prompts, 24, block_size, pad_id=tokenizer.pad_token_id)
    return out.tokens


def test_exported_directory_loads_back_and_samples_identically(tmp_path, small_bpe):
    student, checkpoint = make_run(tmp_path, small_bpe)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    torch.save(checkpoint, ckpt)
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    loaded, tokenizer = load_student(out, dtype=torch.float32, attention="sdpa")
    assert tokenizer.convert_tokens_to_ids("<|mask|>") == loaded.mask_token_id
    want = sample(student, small_bpe)
    assert torch.equal(sample(loaded.eval(), tokenizer), want)
    # The tools' loader gives the same model from the export and from the checkpoint.
    for path in (out, ckpt):
        any_form = load_any(path, dtype=torch.float32)
        assert any_form.block_size == 8
        assert torch.equal(sample(any_form.student, any_form.tokenizer), want)


def test_student_weights_strip_prefixes_and_ignore_other_modules():
    checkpoint = {
        "state_dict": {
            "_forward_module.student.model.lm_head.weight": torch.ones(1),
            "student.model.model.norm.weight": torch.zeros(1),
            "teacher.model.x": torch.ones(1),
            "val_kl.total": torch.ones(1),
        }
    }
    assert sorted(student_weights(checkpoint)) == ["lm_head.weight", "model.norm.weight"]
    with pytest.raises(ValueError, match="student.model"):
        student_weights({"state_dict": {"teacher.w": torch.ones(1)}})
    with pytest.raises(ValueError, match="student_hf_config"):
        student_from_checkpoint({"state_dict": {}})


def test_missing_tokenizer_and_unknown_path_fail_with_the_path(tmp_path, small_bpe):
    student, checkpoint = make_run(tmp_path, small_bpe)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    torch.save(checkpoint, ckpt)
    (tmp_path / "student_tokenizer" / "tokenizer.json").unlink()
    (tmp_path / "student_tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        export_checkpoint(ckpt, tmp_path / "export")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_training_checkpoint(tmp_path / "nowhere")


def test_fsdp_sharded_checkpoint_directory_is_consolidated(tmp_path, small_bpe):
    """The layout Lightning's FSDP strategy writes: DCP files of {"model": ...} plus meta.pt."""
    from torch.distributed.checkpoint import FileSystemWriter, save

    student, checkpoint = make_run(tmp_path, small_bpe)
    sharded = tmp_path / "checkpoints" / "last.ckpt"
    weights = {"model": checkpoint.pop("state_dict")}
    save(weights, storage_writer=FileSystemWriter(sharded), no_dist=True)
    torch.save(checkpoint, sharded / "meta.pt")
    loaded = load_training_checkpoint(sharded)
    assert loaded["global_step"] == 3
    for name, tensor in student.state_dict().items():
        torch.testing.assert_close(loaded["state_dict"][f"student.{name}"], tensor)
    out = export_checkpoint(sharded, tmp_path / "export")
    again, tokenizer = load_student(out, dtype=torch.float32, attention="sdpa")
    assert torch.equal(sample(again.eval(), tokenizer), sample(student, small_bpe))


_DEEPSPEED_WRITER = """
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
import deepspeed, torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
state = torch.load(sys.argv[1], weights_only=False)

class Holder(torch.nn.Module):  # Lightning wraps the module as `_forward_module`
    def __init__(self, module):
        super().__init__()
        self._forward_module = module

from tide_lightning.models import build_student
student = build_student(vocab_size=512, hidden_size=32, num_layers=2, num_heads=4,
                        num_kv_heads=2, mask_token_id=state["student_mask_token_id"])
lightning_module = torch.nn.Module()
lightning_module.student = student
lightning_module.load_state_dict(state.pop("state_dict"))
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}}}
model = Holder(lightning_module)
engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
engine.save_checkpoint(sys.argv[2], client_state=state, tag="checkpoint")
"""


@pytest.mark.slow
def test_deepspeed_zero3_checkpoint_directory_is_consolidated(tmp_path, small_bpe):
    """A real ZeRO-3 checkpoint by DeepSpeed (gloo, one CPU process), laid out as Lightning's."""
    student, checkpoint = make_run(tmp_path, small_bpe)
    torch.save(checkpoint, tmp_path / "state.pt")
    ds_dir = tmp_path / "checkpoints" / "last.ckpt"
    script = tmp_path / "write_ds.py"
    script.write_text(textwrap.dedent(_DEEPSPEED_WRITER))
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "state.pt"), str(ds_dir)],
        check=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )  # fmt: skip
    assert (ds_dir / "latest").is_file()
    loaded = load_any(ds_dir, dtype=torch.float32)
    assert loaded.block_size == 8
    assert torch.equal(sample(loaded.student, loaded.tokenizer), sample(student, small_bpe))


def test_export_is_world_readable_and_works_from_any_folder(tmp_path, small_bpe, monkeypatch):
    import os
    import stat

    run = tmp_path / "run"
    run.mkdir()
    _, checkpoint = make_run(run, small_bpe)
    # as training stores it: a tokenizer directory given by absolute path in config.yaml
    (run / "student_tokenizer").rename(tmp_path / "tok")
    (run / "config.yaml").write_text(f"student:\n  tokenizer:\n    source: {tmp_path / 'tok'}\n")
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    os.umask(0o077)  # even under a strict umask, the export is for everyone to read
    try:
        out = export_checkpoint(run / "checkpoints" / "last.ckpt", "export")
    finally:
        os.umask(0o022)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in Path(out).iterdir()}
    assert modes["model.safetensors"] == 0o644 and modes["config.json"] == 0o644
    assert set(modes.values()) == {0o644}
