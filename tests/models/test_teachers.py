"""Teacher adapter: both attention modes against explicit references, loading, frozenness."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import DataLoader, TensorDataset
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

import tide_lightning
from tide_lightning.errors import UserError
from tide_lightning.method.interfaces import Teacher
from tide_lightning.models import (
    TEACHER_KINDS,
    FrozenTeacher,
    build_student,
    build_teacher,
    build_tiny_moe_teacher,
    load_adapter,
    setup_teacher,
)

VOCAB = 64
MASK = 63
PAD = 60


def tiny_dense(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    return Qwen3ForCausalLM(config).eval()


def rand_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 60, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_registry_holds_the_published_ids():
    assert set(TEACHER_KINDS) >= {"llada2", "wedlm", "generic", "tiny_moe"}
    llada2, wedlm = TEACHER_KINDS["llada2"], TEACHER_KINDS["wedlm"]
    assert (llada2.mask_token_id, llada2.eos_token_id, llada2.mode) == (
        156895,
        156892,
        "bidirectional",
    )
    assert (wedlm.mask_token_id, wedlm.shared_vocab_size, wedlm.mode) == (
        151665,
        151646,
        "clean_first",
    )
    with pytest.raises(ValueError, match="'nope'"):
        build_teacher("nope", tiny_dense())


@pytest.mark.parametrize("mask_format", ["bool", "additive"])
def test_bidirectional_mode_equals_forward_without_padding(mask_format):
    teacher = build_tiny_moe_teacher(VOCAB, MASK, pad_token_id=PAD, seed=0)
    teacher = build_teacher("generic", teacher.model, mask_token_id=MASK, mask_format=mask_format)
    x = rand_ids(2, 10)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False
    x = x.masked_fill(~valid, PAD)
    x[:, ::3] = MASK
    selected = valid & (torch.rand(2, 10, generator=torch.Generator().manual_seed(1)) < 0.7)
    got = teacher.logits(x, selected, attention_mask=valid)
    reference = copy.deepcopy(teacher.model)
    reference.config.is_causal = False
    rows = []
    with torch.no_grad():
        for b in range(2):
            real = x[b, valid[b]][None]  # padding removed outright
            rows.append(reference(input_ids=real).logits[0][selected[b, valid[b]]])
    torch.testing.assert_close(got, torch.cat(rows), atol=1e-5, rtol=1e-5)
    assert not got.requires_grad


def clean_first_reference(model, xt, x0, block_size):
    """Noisy block b, computed alone: ``[x0 blocks < b ; xt block b]`` with explicit loops."""
    length = xt.shape[1]
    out = []
    for start in range(0, length, block_size):
        ids = torch.cat([x0[:, :start], xt[:, start : start + block_size]], dim=1)
        n = ids.shape[1]
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for q in range(n):
            for k in range(n):
                q_noisy, k_noisy = q >= start, k >= start
                if q_noisy:
                    allowed[q, k] = True  # all clean past and its own noisy block
                elif not k_noisy:
                    allowed[q, k] = k // block_size <= q // block_size
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
        pos = torch.arange(n)[None]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        out.append(logits[:, start:])
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("mask_format", ["bool", "additive"])
def test_clean_first_mode_equals_block_by_block_reference(mask_format):
    model = tiny_dense()
    model.set_attn_implementation("sdpa")
    teacher = build_teacher(
        "wedlm", model, block_size=4, mask_token_id=MASK, mask_format=mask_format
    )
    x0 = rand_ids(2, 12)
    xt = torch.where(torch.rand(2, 12, generator=torch.Generator().manual_seed(3)) < 0.5, MASK, x0)
    selected = xt == MASK
    got = teacher.logits(xt, selected, clean_ids=x0)
    want = clean_first_reference(model, xt, x0, 4)[selected]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="clean_ids"):
        teacher.logits(xt, selected)


def test_empty_selection_still_runs_and_returns_no_rows():
    teacher = build_tiny_moe_teacher(VOCAB, MASK, seed=0)
    x = rand_ids(2, 8)
    calls = []
    handle = teacher.model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    out = teacher.logits(x, torch.zeros_like(x, dtype=torch.bool))
    handle.remove()
    assert out.shape == (0, VOCAB) and calls == [1]


def test_tiny_moe_is_a_real_moe_and_trainable():
    teacher = build_tiny_moe_teacher(VOCAB, MASK, seed=0, frozen=False).train()
    assert teacher.model.config.num_experts == 4
    x0 = rand_ids(2, 8)
    xt = x0.masked_fill(torch.arange(8) % 2 == 0, MASK)
    logits = teacher.forward_train(xt, x0, xt == MASK, block_size=8)
    F.cross_entropy(logits, x0[xt == MASK]).backward()
    assert teacher.model.lm_head.weight.grad is not None


def test_tiny_moe_clean_first_reads_what_a_block_student_reads(tmp_path):
    """The clean-first tiny teacher conditions on the clean past and its own noisy block only."""
    teacher = build_tiny_moe_teacher(VOCAB, MASK, seed=0, kind="tiny_moe_clean_first", block_size=4)
    assert teacher.kind.mode == "clean_first" and teacher.block_size == 4
    x0 = rand_ids(1, 12)
    xt = x0.clone()
    xt[0, 5] = MASK  # a masked token in block 1
    sel = xt == MASK
    base = teacher.logits(xt, sel, clean_ids=x0)

    def at5(clean, noisy):
        return teacher.logits(noisy, sel, clean_ids=clean)

    later = x0.clone()
    later[0, 9] = (later[0, 9] + 1) % 60  # block 2, both halves: invisible to block 1
    later_xt = xt.clone()
    later_xt[0, 9] = later[0, 9]
    torch.testing.assert_close(at5(later, later_xt), base)
    earlier = x0.clone()
    earlier[0, 1] = (earlier[0, 1] + 1) % 60  # block 0's clean copy: visible
    assert not torch.allclose(at5(earlier, xt), base)
    own = xt.clone()
    own[0, 6] = (own[0, 6] + 1) % 60  # its own noisy block: visible
    assert not torch.allclose(at5(x0, own), base)
    # The student's training signature feeds x0 as the clean half.
    torch.testing.assert_close(teacher.forward_train(xt, x0, sel, block_size=4), base)
    teacher.save_pretrained(tmp_path / "t", tokenizer=tiny_tokenizer(60))
    loaded = load_adapter("tiny_moe_clean_first", tmp_path / "t", block_size=4)
    torch.testing.assert_close(loaded.logits(xt, sel, clean_ids=x0), base)
    with pytest.raises(ValueError, match="builds"):
        build_tiny_moe_teacher(VOCAB, MASK, kind="wedlm")


def tiny_tokenizer(words: int) -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(words)}
    backend = Tokenizer(models.WordLevel(vocab | {"<unk>": words}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_load_round_trip_and_failures(tmp_path):
    teacher = build_tiny_moe_teacher(VOCAB, MASK, seed=0)
    teacher.save_pretrained(tmp_path / "t", tokenizer=tiny_tokenizer(60))
    loaded = load_adapter("tiny_moe", tmp_path / "t")
    assert loaded.mask_token_id == MASK and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = rand_ids(2, 8)
    sel = torch.ones_like(x, dtype=torch.bool)
    torch.testing.assert_close(loaded.logits(x, sel), teacher.logits(x, sel))

    with pytest.raises(UserError, match="missing"):
        load_adapter("tiny_moe", tmp_path / "missing")
    with pytest.raises(UserError, match="mask id 999"):
        load_adapter("tiny_moe", tmp_path / "t", mask_token_id=999)
    no_mask = json.loads((tmp_path / "t" / "config.json").read_text())
    del no_mask["mask_token_id"]
    (tmp_path / "no_mask").mkdir()
    (tmp_path / "no_mask" / "config.json").write_text(json.dumps(no_mask))
    with pytest.raises(UserError, match="mask id 156895 is outside its vocabulary of 64"):
        load_adapter("llada2", tmp_path / "no_mask")  # the registry's id, config.json has none
    with pytest.raises(UserError, match="never runs remote code"):
        load_adapter("wedlm", tmp_path / "t", trust_remote_code=True)
    teacher.save_pretrained(tmp_path / "big_tok", tokenizer=tiny_tokenizer(80))
    with pytest.raises(UserError, match="tokenizer length 81"):
        load_adapter("tiny_moe", tmp_path / "big_tok")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    assert config["mask_token_id"] == MASK
    frozen = setup_teacher(tmp_path / "t", "tiny_moe")  # one process: sharding "none"
    assert frozen.backend == "none" and frozen.is_frozen()
    assert isinstance(frozen, Teacher) and frozen.mask_token_id == MASK
    torch.testing.assert_close(frozen.logits(x, sel), teacher.logits(x, sel))
    public = tide_lightning.load_teacher(tmp_path / "t", "tiny_moe")
    torch.testing.assert_close(public.logits(x, sel), teacher.logits(x, sel))
    with pytest.raises(UserError, match="'fsdp3'"):
        tide_lightning.load_teacher(tmp_path / "t", "tiny_moe", sharding="fsdp3")
    with pytest.raises(UserError, match="'float8'"):
        tide_lightning.load_teacher(tmp_path / "t", "tiny_moe", dtype="float8")


class _Distill(L.LightningModule):
    """Minimal KD module holding the teacher the way the real one does."""

    def __init__(self, student, teacher):
        super().__init__()
        self.student = student
        self.teacher = FrozenTeacher(teacher)
        self.teacher_modes = []

    def setup(self, stage):
        self.teacher.to(self.device)

    def _loss(self, x0):
        xt = x0.masked_fill(torch.arange(x0.shape[1], device=x0.device) % 2 == 0, MASK)
        sel = xt == MASK
        s = self.student.forward_train(xt, x0, sel, 4)
        t = self.teacher.logits(xt, sel)
        self.teacher_modes.append(self.teacher.adapter.training)
        return F.kl_div(
            F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean"
        )

    def training_step(self, batch, _):
        return self._loss(batch[0])

    def validation_step(self, batch, _):
        self.log("val", self._loss(batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_teacher_stays_frozen_through_fit(tmp_path):
    student = build_student(VOCAB, 32, 1, 4, mask_token_id=MASK, seed=0)
    teacher = build_tiny_moe_teacher(VOCAB, MASK, seed=1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = _Distill(student, teacher)
    data = DataLoader(TensorDataset(rand_ids(8, 8)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        limit_val_batches=1,
        val_check_interval=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data, data)
    teacher_params = {id(p) for p in teacher.parameters()}
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized and not teacher_params & optimized
    assert not any(p.requires_grad for p in teacher.parameters())
    assert module.teacher_modes and not any(module.teacher_modes)  # eval in train and val
    assert not teacher.training and module.student.training
    assert not any("teacher" in name for name, _ in module.named_modules())
    assert not any(k.startswith("teacher") for k in module.state_dict())
    ckpt = torch.load(
        trainer.checkpoint_callback.best_model_path or next(tmp_path.rglob("*.ckpt")),
        weights_only=False,
    )
    assert not any("teacher" in k for k in ckpt["state_dict"])
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_refuses_backends_that_misread_the_mask():
    eager = tiny_dense()
    eager.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="'eager'"):
        build_teacher("generic", eager, mask_token_id=MASK, mask_format="bool")
    build_teacher("generic", eager, mask_token_id=MASK, mask_format="additive")  # correct
    flash = tiny_dense()
    flash.config._attn_implementation = "flash_attention_2"  # as a checkpoint might request
    with pytest.raises(ValueError, match="flash_attention_2"):
        build_teacher("generic", flash, mask_token_id=MASK)


def test_eager_with_additive_mask_equals_sdpa():
    sdpa = tiny_dense()
    sdpa.set_attn_implementation("sdpa")
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    x = rand_ids(2, 8)
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[0, 5:] = False
    sel = valid.clone()
    a = build_teacher("generic", sdpa, mask_token_id=MASK, mask_format="bool")
    b = build_teacher("generic", eager, mask_token_id=MASK, mask_format="additive")
    torch.testing.assert_close(
        a.logits(x, sel, attention_mask=valid), b.logits(x, sel, attention_mask=valid)
    )


def test_every_auto_class_load_says_whether_to_run_remote_code():
    """transformers asks on stdin ("run custom code? [y/N]") when ``trust_remote_code`` is
    left unset for a directory naming custom code; every Auto* load in the package sets it."""
    import ast
    from pathlib import Path

    package = Path(tide_lightning.__file__).parent
    unset = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.startswith("Auto")
                and not any(k.arg == "trust_remote_code" for k in node.keywords)
            ):
                unset.append(f"{path.relative_to(package)}:{node.lineno}")
    assert unset == []
