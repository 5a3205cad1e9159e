"""LLaDA2-MoE: our transformers-5 implementation against the published remote code.

The expected outputs in tests/fixtures/teachers were computed by the verbatim remote
code under transformers 4.57 (``make_llada2_reference.py``); the checkpoints are
rebuilt here from their seed in the hub layout, with remote-code files beside them
that raise if anything imports them.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tide_lightning.errors import UserError
from tide_lightning.models import masks

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "teachers"
_spec = importlib.util.spec_from_file_location("llada2_fixture", FIXTURES / "llada2_fixture.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

TRAP = "raise RuntimeError('remote code was executed')\n"
REMOTE_TRAPS = {"configuration_llada2_moe.py": TRAP, "modeling_llada2_moe.py": TRAP}


@pytest.fixture(scope="module")
def hub_dirs(tmp_path_factory):
    """Both fixture shapes as hub directories (config.json, safetensors, remote .py files)."""
    root = tmp_path_factory.mktemp("llada2")
    return {
        shape: fx.write_hub_dir(root / shape, shape, fx.weights(shape), REMOTE_TRAPS)
        for shape in fx.SHAPES
    }


def _load(directory, dtype=torch.float32, **kwargs):
    from transformers import AutoModelForCausalLM

    import tide_lightning.models.llada2  # noqa: F401  (registers llada2_moe)

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **kwargs).eval()


def _run(model, ids, valid):
    """Logits Float32[B, L, V] and the experts chosen per MoE layer Long[layers, B*L, k]."""
    from tide_lightning.models.llada2.modeling import GroupedSigmoidRouter

    chosen = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: chosen.append(out[0]))
        for m in model.modules()
        if isinstance(m, GroupedSigmoidRouter)
    ]
    with torch.no_grad():
        logits = model(ids, attention_mask=masks.bidirectional_batch_mask(valid)).logits
    for hook in hooks:
        hook.remove()
    return logits, torch.stack(chosen)


def _same_experts(got, want):
    """Bool[layers, tokens]: the same set of experts (order within the top-k is free)."""
    return (got.sort(-1).values == want.sort(-1).values).all(-1)


@pytest.mark.parametrize("shape", ["small", "vocab", "variants"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_logits_and_experts_match_the_remote_code(hub_dirs, shape, dtype):
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    model = _load(hub_dirs[shape], torch_dtype)
    want = load_file(FIXTURES / f"llada2_{shape}_expected.safetensors")
    logits, experts = _run(model, want["input_ids"], want["valid"])
    assert _same_experts(experts, want[f"experts_{dtype}"]).all()
    # bf16: one rounding step of bf16 at |logit| ~ 4 is 0.03.
    tol = 2e-4 if dtype == "fp32" else 5e-2
    if shape == "vocab":
        assert logits.shape[-1] == 157184
        torch.testing.assert_close(
            logits.logsumexp(-1), want[f"logsumexp_{dtype}"], atol=tol, rtol=0
        )
        if dtype == "fp32":
            top = logits.topk(8, dim=-1)
            assert torch.equal(top.indices, want["top_ids_fp32"])
            torch.testing.assert_close(top.values, want["top_values_fp32"], atol=tol, rtol=0)
        logits = logits[..., want["columns"]]
    torch.testing.assert_close(logits, want[f"logits_{dtype}"], atol=tol, rtol=0)


def test_real_mask_and_eos_ids_are_in_the_vocab_inputs():
    ids, valid = fx.inputs("vocab")
    assert (ids == fx.MASK_ID).any() and (ids == fx.EOS_ID).any() and not valid.all()


def test_loads_without_remote_code_or_any_prompt(hub_dirs, monkeypatch):
    def no_stdin(*_args):
        raise AssertionError("something asked on stdin")

    monkeypatch.setattr(builtins, "input", no_stdin)
    from tide_lightning.models.llada2 import LLaDA2MoeForCausalLM

    # The directory's auto_map points at the trap files; the registered class wins.
    assert type(_load(hub_dirs["small"])) is LLaDA2MoeForCausalLM


def test_padding_content_has_no_effect(hub_dirs):
    model = _load(hub_dirs["small"])
    ids, valid = fx.inputs("small")
    scrambled = torch.where(valid, ids, torch.randint_like(ids, 0, 500))
    bool_mask = masks.bidirectional_batch_mask(valid)
    with torch.no_grad():
        base = model(ids, attention_mask=bool_mask).logits
        other = model(scrambled, attention_mask=bool_mask).logits
        additive = model(ids, attention_mask=masks.to_additive(bool_mask, torch.float32)).logits
        two_d = model(ids, attention_mask=valid.long()).logits
    torch.testing.assert_close(other[valid], base[valid], atol=1e-5, rtol=0)
    # Every mask form means the same thing.
    torch.testing.assert_close(additive, base, atol=1e-5, rtol=0)
    torch.testing.assert_close(two_d, base, atol=1e-5, rtol=0)


def test_parameter_names_are_the_hub_checkpoints():
    from tide_lightning.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

    for shape in fx.SHAPES:
        model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**fx.config(shape)))
        layout = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert layout == fx.keys(shape)
        assert "model.layers.1.mlp.gate.expert_bias" in layout
        assert not any("inv_freq" in k for k in layout)


def _edit_checkpoint(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    edit(state)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda s: s.pop("model.layers.2.mlp.gate.expert_bias"), "missing keys: model.layers.2"),
        (lambda s: s.update(extra=torch.zeros(1)), "unexpected keys: extra"),
        (lambda s: s.update({"model.norm.weight": torch.ones(3)}), "mismatched keys"),
    ],
)
def test_loading_is_strict(hub_dirs, tmp_path, edit, named):
    bad = _edit_checkpoint(hub_dirs["small"], tmp_path / "bad", edit)
    with pytest.raises(UserError, match=named):
        _load(bad)


def test_rotary_table_is_right_after_from_pretrained(hub_dirs):
    model = _load(hub_dirs["small"])
    table = model.model.rotary_emb
    width = 16 // 2
    want = 1.0 / 600000.0 ** (torch.arange(0, width, 2).float() / width)
    torch.testing.assert_close(table.inv_freq, want, atol=0, rtol=1e-6)
    table.inv_freq.fill_(1.8e28)  # what an uninitialised buffer looks like
    model.reset_rotary()
    torch.testing.assert_close(table.inv_freq, want, atol=0, rtol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [
        ("norm_head", True),
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
        ("score_function", "softmax"),
        ("router_dtype", "bf16"),
        ("use_sliding_window", True),
        ("moe_router_enable_expert_bias", False),
        ("using_split_qkv_in_self_attention", True),
        ("norm_topk_prob", False),
        ("embedding_dropout", 0.1),
        ("num_shared_experts", 0),
        ("n_group", 5),
        ("topk_group", 9),
        ("rotary_dim", 32),
        ("model_type", "llada2_moe_veomni"),
        ("hidden_act", "swish_of_the_day"),
    ],
)
def test_unsupported_config_values_are_refused(field, value):
    from tide_lightning.models.llada2 import LLaDA2MoeConfig

    key = "rope_scaling" if field == "rope_scaling" else field
    with pytest.raises(UserError, match=key):
        LLaDA2MoeConfig(**{**fx.MINI_CONFIG, field: value})


def test_eager_attention_is_refused(hub_dirs):
    with pytest.raises(UserError, match="SDPA only, not 'eager'"):
        _load(hub_dirs["small"], attn_implementation="eager")


def test_full_size_config_builds_on_meta():
    from tide_lightning.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeForCausalLM

    config = LLaDA2MoeConfig(**fx.MINI_CONFIG)
    with torch.device("meta"):
        model = LLaDA2MoeForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    assert 16.0e9 < total < 16.5e9, total  # "16B total parameters"
    assert config.rotary_width == 64 and config.rotary_base == 600000.0
    saved = json.loads(config.to_json_string())
    assert saved["model_type"] == "llada2_moe"


def test_bare_decoder_and_router_buffers_load(hub_dirs):
    from transformers import AutoModel

    import tide_lightning.models.llada2  # noqa: F401

    state = load_file(hub_dirs["small"] / "model.safetensors")
    decoder = AutoModel.from_pretrained(str(hub_dirs["small"]), dtype=torch.float32)
    lm = _load(hub_dirs["small"])
    for layer in (1, 2):
        want = state[f"model.layers.{layer}.mlp.gate.expert_bias"]
        assert want.abs().max() > 0
        assert torch.equal(decoder.layers[layer].mlp.gate.expert_bias, want)
        assert torch.equal(lm.model.layers[layer].mlp.gate.expert_bias, want)
    ids, valid = fx.inputs("small")
    with torch.no_grad():
        hidden = decoder(ids, attention_mask=valid).last_hidden_state
        torch.testing.assert_close(
            lm.lm_head(hidden), lm(ids, attention_mask=valid).logits, atol=0, rtol=0
        )


def test_moe_blocks_become_zero3_leaves_before_the_engine():
    from deepspeed.utils import z3_leaf_module

    from tide_lightning.models.llada2 import LLaDA2MoeConfig, LLaDA2MoeForCausalLM, SparseMoeBlock
    from tide_lightning.models.sharding import mark_zero3_leaves

    model = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**fx.config("small")))
    assert mark_zero3_leaves(model) == [SparseMoeBlock]
    blocks = [m for m in model.modules() if isinstance(m, SparseMoeBlock)]
    assert len(blocks) == 2 and all(z3_leaf_module(b) for b in blocks)
    assert not any(z3_leaf_module(m) for m in model.modules() if not isinstance(m, SparseMoeBlock))
    dense = LLaDA2MoeForCausalLM(LLaDA2MoeConfig(**{**fx.config("small"), "num_experts": None}))
    assert mark_zero3_leaves(dense) == []


def test_public_load_teacher_gives_the_reference_logits(hub_dirs):
    from tide_lightning import load_teacher

    teacher = load_teacher(hub_dirs["vocab"], "llada2", "float32")
    want = load_file(FIXTURES / "llada2_vocab_expected.safetensors")
    ids, valid = want["input_ids"], want["valid"]
    at = (ids == fx.MASK_ID) & valid
    assert teacher.mask_token_id == fx.MASK_ID and at.sum() > 3
    got = teacher.logits(ids, at, attention_mask=valid)
    torch.testing.assert_close(got[:, want["columns"]], want["logits_fp32"][at], atol=2e-4, rtol=0)


def test_tied_embeddings_load_without_a_head_key(tmp_path):
    config = {**fx.config("small"), "tie_word_embeddings": True}
    state = fx.weights("small")
    state.pop("lm_head.weight")
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model = _load(tmp_path)
    assert torch.equal(model.lm_head.weight, state["model.word_embeddings.weight"])


def test_unimplemented_forward_options_are_refused(hub_dirs):
    model = _load(hub_dirs["small"])
    ids, _ = fx.inputs("small")
    for option in ({"labels": ids}, {"output_attentions": True}, {"use_cache": True}):
        with pytest.raises(UserError, match=next(iter(option))):
            model(ids, **option)
    with torch.no_grad():
        (logits,) = model(ids, return_dict=False, output_hidden_states=None)
    assert logits.shape == (2, 16, 512)


def test_registration_happens_only_when_the_package_is_imported():
    import subprocess
    import sys

    code = (
        "import sys, tide_lightning.models\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "before = 'llada2_moe' in CONFIG_MAPPING or 'tide_lightning.models.llada2' in sys.modules\n"
        "import tide_lightning.models.llada2\n"
        "print(before, 'llada2_moe' in CONFIG_MAPPING)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_every_published_config_key_is_a_declared_field():
    import dataclasses

    from tide_lightning.models.llada2 import LLaDA2MoeConfig

    declared = {f.name for f in dataclasses.fields(LLaDA2MoeConfig)}
    # Folded by transformers itself: rope_theta/rope_scaling -> rope_parameters (checked),
    # torch_dtype -> dtype; auto_map names the remote code this model replaces.
    handled = {"rope_theta", "rope_scaling", "torch_dtype", "auto_map", "model_type"}
    assert set(fx.MINI_CONFIG) - declared <= handled
