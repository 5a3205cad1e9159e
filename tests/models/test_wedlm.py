"""WeDLM loaded as transformers' Qwen3 against its verbatim remote code (transformers 4.57).

The checkpoints are rebuilt from a seed in the hub layout (tests/fixtures/teachers/
wedlm_fixture.py); the expected logits came from ``make_wedlm_reference.py``. The
remote-code files in the directory are stubs that fail on import: loading must never
execute them. Also here: the no-silently-wrong-teacher checks (buffers, cache, attention
back-end) and tokenizer directories that name custom code.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen3ForCausalLM

import tide_lightning
from tide_lightning.errors import UserError
from tide_lightning.models import build_teacher, build_tiny_moe_teacher, load_adapter
from tide_lightning.models.loading import check_non_persistent_buffers, load_tokenizer_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "teachers"
sys.path.insert(0, str(FIXTURES))
import wedlm_fixture as fx  # noqa: E402

# Remote code that must never run: importing it fails the load loudly.
TRAP = "raise RuntimeError('remote code was executed')\n"
REMOTE_STUBS = {"configuration_wedlm.py": TRAP, "modeling_wedlm.py": TRAP}


@pytest.fixture(scope="module", params=list(fx.SHAPES))
def hub_dir(request, tmp_path_factory):
    shape = request.param
    directory = fx.write_hub_dir(tmp_path_factory.mktemp("wedlm") / shape, shape, REMOTE_STUBS)
    expected = load_file(FIXTURES / f"wedlm_{shape}_expected.safetensors")
    return shape, directory, expected


def ours(directory: Path, expected: dict, dtype: str = "float32") -> torch.Tensor:
    teacher = tide_lightning.load_teacher(directory, "wedlm", dtype=dtype, block_size=fx.BLOCK_SIZE)
    valid = expected["valid"]
    return teacher.logits(expected["xt"], valid, attention_mask=valid, clean_ids=expected["x0"])


def compare(shape: str, got: torch.Tensor, expected: dict, name: str, atol: float) -> None:
    got = got.float()
    if shape == "small":
        torch.testing.assert_close(got, expected[f"logits_{name}"], atol=atol, rtol=0)
        return
    torch.testing.assert_close(
        got[:, expected["columns"]], expected[f"logits_{name}"], atol=atol, rtol=0
    )
    torch.testing.assert_close(got.logsumexp(-1), expected[f"logsumexp_{name}"], atol=atol, rtol=0)


def test_inputs_are_the_reference_inputs(hub_dir):
    shape, _, expected = hub_dir
    for got, name in zip(fx.inputs(shape), ("x0", "xt", "valid"), strict=True):
        assert torch.equal(got, expected[name]), name


def test_float32_logits_match_the_remote_code(hub_dir):
    shape, directory, expected = hub_dir
    got = ours(directory, expected)
    assert got.shape[0] == fx.LENGTH + fx.SHORT  # row-major order of the real tokens
    compare(shape, got, expected, "float32", atol=2e-4)
    if shape == "vocab":
        assert torch.equal(got.topk(8, dim=-1).indices, expected["top_ids_float32"])


def test_bfloat16_logits_match_the_remote_code(hub_dir):
    shape, directory, expected = hub_dir
    got = ours(directory, expected, dtype="bfloat16")
    assert got.dtype == torch.bfloat16
    # Both sides round to bf16 at nearly the same points: measured 0.016 (small) and 0.027
    # (vocab) apart, and 0.042 / 0.049 from the float32 reference, at logits up to 5.
    compare(shape, got, expected, "bfloat16", atol=0.04)
    compare(shape, got, expected, "float32", atol=0.08)


def test_real_ids_and_the_model_class(hub_dir):
    shape, directory, _ = hub_dir
    teacher = tide_lightning.load_teacher(directory, "wedlm")
    model = teacher.adapter.model
    assert type(model) is Qwen3ForCausalLM and model.config._attn_implementation == "sdpa"
    assert model.config.use_cache is False  # the hub config says true
    if shape == "vocab":
        assert (teacher.mask_token_id, teacher.vocab_size) == (fx.MASK_ID, 151936)
        assert teacher.kind.shared_vocab_size == 151646


def test_padding_content_has_no_effect(hub_dir):
    shape, directory, expected = hub_dir
    teacher = tide_lightning.load_teacher(directory, "wedlm", block_size=fx.BLOCK_SIZE)
    x0, xt, valid = expected["x0"], expected["xt"], expected["valid"]
    noise = torch.randint(0, 400, x0.shape, generator=torch.Generator().manual_seed(5))
    x0_b, xt_b = torch.where(valid, x0, noise), torch.where(valid, xt, noise.flip(0))
    a = teacher.logits(xt, valid, attention_mask=valid, clean_ids=x0)
    b = teacher.logits(xt_b, valid, attention_mask=valid, clean_ids=x0_b)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_every_teacher_forward_runs_without_a_cache(hub_dir):
    _, directory, expected = hub_dir
    teacher = tide_lightning.load_teacher(directory, "wedlm", block_size=fx.BLOCK_SIZE)
    seen = []
    decoder = teacher.adapter.model.get_decoder()
    handle = decoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs.get("use_cache")), with_kwargs=True
    )
    out = decoder(input_ids=expected["x0"][:, :4])  # not passing use_cache: config default
    handle.remove()
    assert out.past_key_values is None if hasattr(out, "past_key_values") else out.cache is None
    handle = decoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs.get("use_cache")), with_kwargs=True
    )
    teacher.logits(expected["xt"], expected["valid"], clean_ids=expected["x0"])
    handle.remove()
    assert seen == [None, False]


def _variant(tmp_path: Path, **changes) -> Path:
    directory = fx.write_hub_dir(tmp_path / "variant", "small", REMOTE_STUBS)
    config = json.loads((directory / "config.json").read_text()) | changes
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"qk_norm": False}, "qk_norm"),
        ({"attention_bias": True}, "attention_bias"),
        ({"use_sliding_window": True, "sliding_window": 8}, "use_sliding_window"),
    ],
)
def test_wedlm_variants_other_than_qwen3_are_refused(tmp_path, changes, key):
    with pytest.raises(UserError, match=f"{key}="):
        load_adapter("wedlm", _variant(tmp_path, **changes))


def test_checkpoint_keys_must_match(tmp_path):
    directory = _variant(tmp_path, num_hidden_layers=3)  # a layer the checkpoint lacks
    with pytest.raises(UserError, match="missing_keys: model.layers.2"):
        load_adapter("wedlm", directory)


def test_a_corrupted_rotary_table_refuses_the_teacher(tmp_path, monkeypatch):
    directory = _variant(tmp_path)
    original = Qwen3ForCausalLM.from_pretrained.__func__

    def corrupted(cls, *args, **kwargs):
        model, info = original(cls, *args, **kwargs)
        model.model.rotary_emb.inv_freq.mul_(1.5)  # what an uninitialised buffer looks like
        return model, info

    monkeypatch.setattr(Qwen3ForCausalLM, "from_pretrained", classmethod(corrupted))
    with pytest.raises(UserError, match="'model.rotary_emb.inv_freq' differs"):
        load_adapter("wedlm", directory)


def test_buffer_check_accepts_a_sound_model_and_names_the_bad_buffer():
    model = build_tiny_moe_teacher(64, 63, seed=0).model
    check_non_persistent_buffers(model)
    model.model.rotary_emb.original_inv_freq.fill_(1.8e28)
    with pytest.raises(UserError, match="'model.rotary_emb.original_inv_freq'"):
        check_non_persistent_buffers(model)


def test_llada2_refuses_eager_attention():
    model = build_tiny_moe_teacher(64, 63, seed=0).model
    model.set_attn_implementation("eager")
    with pytest.raises(UserError, match="only under 'sdpa'"):
        build_teacher("llada2", model, mask_token_id=63)


def _custom_code_tokenizer_dir(directory: Path, qwen3, mask_token: str | None = None) -> Path:
    """A tokenizer directory as the hub has them: custom classes named in auto_map."""
    qwen3.save_pretrained(str(directory))
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    if mask_token is not None:
        tok_config["mask_token"] = mask_token
    tok_config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    tok_config["tokenizer_class"] = "CustomTokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (directory / "tokenization_custom.py").write_text(TRAP)
    (directory / "config.json").write_text(
        json.dumps({"model_type": "wedlm", "auto_map": {"AutoConfig": "configuration_wedlm.X"}})
    )
    (directory / "configuration_wedlm.py").write_text(TRAP)
    return directory


def _closed_stdin(monkeypatch) -> list:
    """Close stdin and record every ``input()`` call (transformers turns a failed prompt
    into a ValueError, so raising alone could go unnoticed)."""
    asked = []

    def no_input(*args, **_kwargs):
        asked.append(args)
        raise EOFError

    monkeypatch.setattr(builtins, "input", no_input)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    sys.stdin.close()
    return asked


def test_custom_code_tokenizer_loads_without_a_prompt(tmp_path, monkeypatch, qwen3):
    directory = _custom_code_tokenizer_dir(tmp_path / "tok", qwen3)
    asked = _closed_stdin(monkeypatch)
    tok = load_tokenizer_dir(directory)
    text = "def f(x):\n    return x  # 数学"
    assert tok(text)["input_ids"] == qwen3(text)["input_ids"]
    assert len(tok) == len(qwen3) and asked == []


def test_teacher_directory_with_custom_code_everywhere_loads_without_a_prompt(
    tmp_path, monkeypatch, qwen3
):
    directory = fx.write_hub_dir(tmp_path / "hub", "vocab", REMOTE_STUBS)
    config = (directory / "config.json").read_text()
    _custom_code_tokenizer_dir(directory, qwen3, mask_token="<tool_response>")  # id 151665
    (directory / "config.json").write_text(config)  # the model's config, auto_map and all
    asked = _closed_stdin(monkeypatch)
    teacher = tide_lightning.load_teacher(directory, "wedlm")
    assert teacher.mask_token_id == fx.MASK_ID and asked == []


@pytest.mark.parametrize("compdemo", [False, True])
def test_a_shared_pipeline_step_runs_on_the_wedlm_teacher(tmp_path, compdemo):
    from tide_lightning.method.objective import ObjectiveConfig, distill_step
    from tide_lightning.models import build_student

    directory = fx.write_hub_dir(tmp_path / "hub", "vocab", REMOTE_STUBS)
    teacher = tide_lightning.load_teacher(directory, "wedlm", block_size=fx.BLOCK_SIZE)
    calls = []
    plain = teacher.logits

    def recorded(input_ids, logits_at, attention_mask=None, clean_ids=None):
        calls.append((input_ids, logits_at, clean_ids))
        return plain(input_ids, logits_at, attention_mask=attention_mask, clean_ids=clean_ids)

    teacher.logits = recorded
    student = build_student(151936, 16, 1, 2, mask_token_id=151669, seed=0)
    ids = torch.randint(0, 151646, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "maskable": torch.ones_like(ids, dtype=torch.bool)}
    objective = ObjectiveConfig(variant="tide_shared", block_size=fx.BLOCK_SIZE, compdemo=compdemo)
    out = distill_step(
        student, teacher, batch, objective, 0.5, torch.Generator().manual_seed(1), pipeline="shared"
    )
    assert torch.isfinite(out.loss) and out.teacher_finite
    out.loss.backward()
    assert len(calls) == 1
    noisy, wanted, clean = calls[0]
    assert torch.equal(clean, ids.repeat(noisy.shape[0] // 2, 1))  # x0 beside each xt
    assert (noisy[wanted] == fx.MASK_ID).all()  # the teacher's own mask id, not the student's
    assert not (noisy == 151669).any()


def test_the_full_size_wedlm_8b_config_builds_as_qwen3_8b():
    from accelerate import init_empty_weights

    from tide_lightning.models.loading import wedlm_qwen3_config

    config = wedlm_qwen3_config(fx.WEDLM_8B_CONFIG)
    with init_empty_weights():
        model = Qwen3ForCausalLM(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(math.prod(shape) for shape in fx.keys_of(fx.WEDLM_8B_CONFIG).values())
    assert round(count / 1e9, 2) == 8.19  # Qwen3-8B's published size
    assert config.use_cache is False and config.rope_parameters["rope_theta"] == 1e6
