"""Configs are validated when they load: every bad value fails at once, naming its key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tide_lightning import config as cfg
from tide_lightning.cli import main
from tide_lightning.config import ConfigError, RunConfig, field_docs, load_config, to_yaml
from tide_lightning.errors import UserError

CONF = Path(__file__).resolve().parents[1] / "conf"

BAD_VALUES = [
    # the values the issue found accepted, then failing 15-25 s later with a traceback
    ("objective.lambda_shape=bogus", "objective.lambda_shape must be one of cosine, linear"),
    ("objective.tidal_axis=nope", "objective.tidal_axis must be one of both"),
    ("objective.time_weight=x", "objective.time_weight must be one of midrange, uniform"),
    ("teacher.kind=nonexistent", "teacher.kind must be one of llada2, wedlm"),
    ("student.attention=flex_attention", "student.attention must be one of auto, sdpa, flex"),
    ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
    ("data.batch_size=-4", "data.batch_size must be >= 1, got -4"),
    ("objective.temperature=0", "objective.temperature must be > 0"),
    ("objective.temperature=-2", "objective.temperature must be > 0"),
    # the obvious others
    ("optim.lr=-1e-4", "optim.lr must be > 0"),
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be >= 0"),
    ("optim.betas=[0.9]", "optim.betas must be two in [0, 1)"),
    ("optim.betas=[0.9,1.5]", "optim.betas must be two in [0, 1)"),
    ("optim.warmup_ratio=1.0", "optim.warmup_ratio must be in [0, 1)"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio must be in [0, 1]"),
    ("optim.max_bad_steps=-1", "optim.max_bad_steps must be >= 0"),
    ("objective.block_size=48", "data.max_length must be a multiple of objective.block_size=48"),
    ("objective.block_size=0", "objective.block_size must be > 0"),
    ("objective.lambda_init=1.5", "objective.lambda_init must be in [0, 1]"),
    ("objective.lambda_init=-0.1", "objective.lambda_init must be in [0, 1]"),
    ("objective.lambda_max=1.1", "objective.lambda_max must be in [objective.lambda_init=0.1, 1]"),
    ("objective.lambda_max=0.05", "objective.lambda_max must be in [objective.lambda_init"),
    ("objective.compdemo_ratio=1", "objective.compdemo_ratio must be in (0, 1)"),
    ("objective.compdemo_ratio=0", "objective.compdemo_ratio must be in (0, 1)"),
    ("objective.distill_weight=-1", "objective.distill_weight must be >= 0"),
    ("objective.time_eps=0", "objective.time_eps must be in (0, 1)"),
    ("objective.shared_vocab_size=0", "objective.shared_vocab_size must be > 0"),
    ("objective.variant=nope", "objective.variant: unknown variant 'nope'"),
    ("objective.variant=calm", "objective.variant: variant 'calm' runs in the cross pipeline"),
    ("pipeline=both", "pipeline must be one of shared, cross"),
    ("seed=-1", "seed must be in [0, 4294967295]"),
    ("run_dir=''", "run_dir must be a directory"),
    ("data.max_length=0", "data.max_length must be > 0"),
    ("data.teacher_max_length=0", "data.teacher_max_length must be > 0"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("data.val_batches=0", "data.val_batches must be >= 1"),
    ("student.arch=gpt", "student.arch must be one of bd3lm, tiny_moe"),
    ("student.hidden_size=0", "student.hidden_size must be > 0"),
    ("student.num_kv_heads=3", "student.num_kv_heads must be a divisor of student.num_heads=4"),
    ("student.hidden_size=66", "student.hidden_size must be a multiple of student.num_heads=4"),
    ("student.tokenizer.vocab_size=10", "tokenizer.vocab_size must be >= 64"),
    ("teacher.sharding=zero", "teacher.sharding must be one of auto, deepspeed, none"),
    ("teacher.mask_token_id=-1", "teacher.mask_token_id must be >= 0"),
    ("teacher.kind=wedlm", "teacher.path is required for teacher.kind=wedlm"),
    ("trainer.max_steps=0", "trainer.max_steps must be > 0"),
    ("trainer.devices=0", "trainer.devices must be >= 1, got 0"),
    ("trainer.num_nodes=0", "trainer.num_nodes must be >= 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1"),
    ("trainer.val_check_interval=0", "trainer.val_check_interval must be >= 1"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be >= 0"),
    ("trainer.precision=fp8", "trainer.precision must be one of 32-true"),
    ("trainer.accelerator=quantum", "trainer.accelerator must be one of auto, cpu"),
    ("trainer.strategy=ddpp", "trainer.strategy must be one of auto, ddp,"),
    ("trainer.limit_val_batches=-1", "trainer.limit_val_batches must be >= 0"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_fails_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(CONF / "tiny.yaml", [override])
    assert message in str(err.value)
    assert isinstance(err.value, UserError)  # the CLI's one-line error


@pytest.mark.parametrize("override", ["objective.lambda_shape=bogus", "data.batch_size=-4"])
def test_print_config_and_fit_refuse_with_one_line_and_exit_2(override, capsys):
    for command in ("print-config", "fit"):
        assert main([command, "--config", str(CONF / "tiny.yaml"), override]) == 2
        err = capsys.readouterr().err
        key = override.split("=")[0]
        assert err.startswith(f"error: {key} must be ") and err.count("\n") == 1, err


def test_cross_pipeline_rules():
    with pytest.raises(ConfigError, match="objective.variant: variant 'tide_shared' runs in"):
        load_config(CONF / "tiny_cross.yaml", ["objective.variant=tide_shared"])
    with pytest.raises(ConfigError, match="teacher.tokenizer or teacher.path is required"):
        load_config(CONF / "tiny_cross.yaml", ["teacher.tokenizer=null"])
    with pytest.raises(ConfigError, match="needs a teacher"):
        load_config(CONF / "tiny_cross.yaml", ["teacher=null"])
    with pytest.raises(ConfigError, match="objective.variant=kl needs a teacher"):
        load_config(CONF / "tiny.yaml", ["teacher=null", "objective.variant=kl"])
    assert load_config(CONF / "tiny.yaml", ["teacher=null", "objective.variant=ce"]).teacher is None


def test_per_pipeline_defaults_are_resolved_at_load_and_user_values_kept():
    shared = load_config(None, ["objective.variant=tide_shared"]).objective
    assert (shared.temperature, shared.time_weight, shared.compdemo) == (2.0, "midrange", True)
    kl = load_config(None, ["objective.variant=kl"]).objective
    assert kl.compdemo is False
    cross = load_config(CONF / "tiny_cross.yaml", ["objective.temperature=null"]).objective
    assert (cross.temperature, cross.time_weight) == (5.0, "uniform")
    given = load_config(
        CONF / "tiny_cross.yaml",
        ["objective.temperature=0.5", "objective.time_weight=midrange", "objective.compdemo=false"],
    ).objective
    assert (given.temperature, given.time_weight, given.compdemo) == (0.5, "midrange", False)


def test_print_config_shows_effective_values_not_null(capsys):
    assert main(["print-config", "--config", str(CONF / "tiny.yaml")]) == 0
    out = capsys.readouterr().out
    for line in ("temperature: 2.0", "compdemo: true", "time_weight: midrange"):
        assert f"  {line}\n" in out, line


@pytest.mark.parametrize("name", sorted(p.name for p in CONF.glob("*.yaml")))
def test_commented_yaml_documents_every_field_and_loads_back(name, tmp_path, monkeypatch):
    for var in ("TIDE_STUDENT", "TIDE_TEACHER", "TIDE_DATA", "TIDE_RUN_DIR"):
        monkeypatch.setenv(var, "/checkpoints/placeholder")
    config = load_config(CONF / name)
    text = to_yaml(config, comments=True)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            assert lines[i - 1].strip().startswith("#"), f"no comment above {line!r}"
    assert "# Student block size" in text and "# Peak learning rate (> 0)." in text
    (tmp_path / "printed.yaml").write_text(text)
    assert load_config(tmp_path / "printed.yaml") == config
    (tmp_path / "plain.yaml").write_text(to_yaml(config))
    assert load_config(tmp_path / "plain.yaml") == config


def _groups(cls: type) -> list[type]:
    """Every dataclass reachable from ``cls``'s fields (the config groups)."""
    found = [cls]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for arg in (hints[f.name], *typing.get_args(hints[f.name])):
            for inner in (arg, *typing.get_args(arg)):
                if dataclasses.is_dataclass(inner) and inner not in found:
                    found += [g for g in _groups(inner) if g not in found]
    return found


def test_every_field_of_every_group_has_a_docstring():
    groups = _groups(RunConfig)
    assert {g.__name__ for g in groups} >= {
        "RunConfig", "StudentConfig", "TokenizerConfig", "TeacherConfig", "DataConfig",
        "SourceSpec", "ObjectiveConfig", "OptimConfig", "TrainerConfig",
    }  # fmt: skip
    for group in groups:
        docs = field_docs(group)
        missing = [f.name for f in dataclasses.fields(group) if not docs.get(f.name)]
        assert missing == [], f"{group.__name__}: no docstring for {missing}"


def test_declared_choices_match_the_registries():
    from lightning.fabric.connector import _PRECISION_INPUT_STR

    from tide_lightning.data.examples import TEACHER_VIEWS
    from tide_lightning.data.mixing import MIXING_MODES
    from tide_lightning.models.student import resolve_attention
    from tide_lightning.models.teachers import TEACHER_KINDS, TINY_KINDS

    assert set(cfg.TEACHER_KINDS) == set(TEACHER_KINDS)
    assert cfg.TINY_TEACHER_KINDS == TINY_KINDS
    assert cfg.MIXING_MODES == MIXING_MODES and cfg.TEACHER_VIEWS == TEACHER_VIEWS
    assert set(cfg.PRECISIONS) <= set(typing.get_args(_PRECISION_INPUT_STR))
    for attention in cfg.ATTENTION:
        try:
            assert resolve_attention(attention) in ("sdpa", "flex_attention")
        except ValueError as err:  # flex without CUDA: refused for the machine, not the name
            assert "needs CUDA" in str(err)
    with pytest.raises(ValueError, match="must be 'auto', 'sdpa' or 'flex'"):
        resolve_attention("flex_attention")


def test_sources_are_the_data_packages_source_spec():
    from tide_lightning.data.sources import SourceSpec

    assert SourceSpec is cfg.SourceSpec  # one class, no mirror to convert through
    config = load_config(
        CONF / "tiny.yaml", ["data.sources=[{kind: code, path: src, suffixes: [.py, .pyi]}]"]
    )
    assert config.data.sources == [SourceSpec("code", "src", suffixes=(".py", ".pyi"))]
    with pytest.raises(ConfigError, match="data source x: kind must be one of jsonl"):
        load_config(CONF / "tiny.yaml", ["data.sources=[{kind: csv, path: x}]"])
    with pytest.raises(ConfigError, match="data source x: weight must be > 0, got 0"):
        load_config(CONF / "tiny.yaml", ["data.sources=[{kind: jsonl, path: x, weight: 0}]"])


def test_loading_a_config_imports_neither_lightning_nor_transformers():
    code = (
        "import sys; from tide_lightning.config import load_config; "
        "load_config('conf/tiny.yaml', ['objective.variant=kl']); "
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    root = CONF.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # print-config answers in about a second


def test_unset_environment_path_names_the_variable_and_key(monkeypatch):
    monkeypatch.delenv("TIDE_STUDENT", raising=False)
    with pytest.raises(ConfigError, match=r"TIDE_STUDENT is not set \(key: student.path\)"):
        load_config(CONF / "cross_llada2.yaml")
