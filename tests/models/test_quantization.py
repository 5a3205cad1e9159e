"""teacher.load_in_4bit refuses, in one line, wherever it cannot really quantize."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from tide_lightning.config import ConfigError, load_config
from tide_lightning.models import quantization


def test_refuses_without_cuda():
    with pytest.raises(ConfigError, match="teacher.load_in_4bit needs a CUDA device"):
        quantization.check_four_bit("none", cuda=False, bitsandbytes=True)


def test_refuses_without_bitsandbytes():
    with pytest.raises(ConfigError, match="pip install 'bitsandbytes"):
        quantization.check_four_bit("none", cuda=True, bitsandbytes=False)


def test_refuses_a_zero3_sharded_teacher():
    with pytest.raises(ConfigError, match="teacher.sharding: none"):
        quantization.check_four_bit("deepspeed", cuda=True, bitsandbytes=True)


def test_auto_sharding_with_several_processes_is_deepspeed(monkeypatch):
    monkeypatch.setattr(quantization.torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(ConfigError, match="ZeRO-3"):
        quantization.refuse_four_bit("auto", world_size=8)
    quantization.refuse_four_bit("auto", world_size=1)  # everything present, one process: fine


def test_four_bit_config_is_the_published_nf4(monkeypatch):
    monkeypatch.setattr(quantization, "check_four_bit", lambda sharding: None)
    pytest.importorskip("transformers")
    config = quantization.four_bit_config("none")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert str(config.bnb_4bit_compute_dtype) == "torch.bfloat16"


def test_the_config_key_exists_and_defaults_off():
    assert load_config(None, []).teacher.load_in_4bit is False
    assert load_config(None, ["teacher.load_in_4bit=true"]).teacher.load_in_4bit is True


def test_setup_teacher_hands_the_nf4_config_to_from_pretrained(monkeypatch, tmp_path):
    from tide_lightning.models import frozen

    monkeypatch.setattr(quantization, "check_four_bit", lambda sharding: None)
    seen = {}

    def fake_load(kind, path, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the hand-over")

    monkeypatch.setattr(frozen, "load_adapter", fake_load)
    with pytest.raises(RuntimeError, match="hand-over"):
        frozen.setup_teacher(tmp_path, "wedlm", sharding="none", load_in_4bit=True)
    assert seen["quantization_config"].bnb_4bit_quant_type == "nf4"


def test_setup_teacher_refuses_four_bit_without_cuda(tmp_path):
    from tide_lightning.models import frozen

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA"):
        frozen.setup_teacher(tmp_path, "wedlm", sharding="none", load_in_4bit=True)
