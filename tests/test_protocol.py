"""docs/protocol.md and the two cluster configs agree, row by row (issue 12).

The table is parsed from the document: every row that names a config key has its value
(one for both configs, or ``shared / cross``) checked against the loaded config, so the
document and the configs cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tide_lightning.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("shared_wedlm", "cross_llada2")
HEADER = "| published setting | where it is in the published code | our config key | our value |"


def _cells(line: str) -> list[str]:
    # Split on pipes that are not escaped (\| stays inside a cell, e.g. |M|).
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def protocol_rows() -> list[tuple[str, str, str, str]]:
    """The table's data rows: (setting, where, key, value)."""
    lines = (ROOT / "docs" / "protocol.md").read_text().splitlines()
    start = lines.index(HEADER)
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == 4, f"docs/protocol.md row does not have 4 cells: {line}"
        rows.append(tuple(cells))
    return rows


def _checked(rows):
    return [r for r in rows if r[2] != "—"]


def _lookup(config, dotted: str):
    value = config
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted.strip("`")):
        value = value[int(part[1:-1])] if part.startswith("[") else getattr(value, part)
    return value


def _expected(value_cell: str) -> tuple:
    """(shared_wedlm value, cross_llada2 value): "`a` / `b`", or one "`a`" for both."""
    pair = re.match(r"`([^`]*)`\s*/\s*`([^`]*)`", value_cell)
    if pair:
        return yaml.safe_load(pair[1]), yaml.safe_load(pair[2])
    single = re.match(r"`([^`]*)`", value_cell)
    assert single, f"a checked row's value must start with a backticked value: {value_cell!r}"
    value = yaml.safe_load(single[1])
    return value, value


@pytest.fixture(scope="module")
def configs():
    env = {"TIDE_STUDENT": "/ckpt/student", "TIDE_TEACHER": "/ckpt/teacher", "TIDE_DATA": "/data"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("TIDE_RUN_DIR", raising=False)
        return {name: load_config(ROOT / "conf" / f"{name}.yaml") for name in CONFIGS}


def test_the_table_is_there_and_covers_the_issue():
    rows = protocol_rows()
    keys = {r[2].strip("`") for r in _checked(rows)}
    required = {
        "optim.lr", "optim.warmup_ratio", "optim.weight_decay", "trainer.gradient_clip_val",
        "objective.block_size", "data.max_length", "data.teacher_max_length",
        "objective.time_eps", "objective.temperature", "objective.lambda_init",
        "objective.lambda_max", "objective.compdemo_ratio", "teacher.mask_token_id",
        "objective.shared_vocab_size", "objective.time_weight", "data.mixing",
        "data.heldout_fraction", "trainer.epochs", "data.batch_size",
        "data.sources[2].assistant_contains", "teacher.load_in_4bit", "data.supervision",
        "data.teacher_view", "objective.variant",
    }  # fmt: skip
    assert required <= keys, sorted(required - keys)
    assert len(rows) >= 45


@pytest.mark.parametrize("row", _checked(protocol_rows()), ids=lambda r: r[2].strip("`"))
def test_each_row_holds_in_both_cluster_configs(configs, row):
    setting, _, key, value = row
    for name, want in zip(CONFIGS, _expected(value), strict=True):
        got = _lookup(configs[name], key)
        got = list(got) if isinstance(got, tuple) else got
        if isinstance(want, float) and isinstance(got, (int, float)):
            assert got == pytest.approx(want), f"{name}: {key} = {got}, docs/protocol.md: {want}"
        else:
            assert got == want, f"{name}: {key} = {got!r}, docs/protocol.md says {want!r}"


def test_sources_are_the_published_four(configs):
    for config in configs.values():
        paths = [s.path for s in config.data.sources]
        assert [p.split("/")[-2] for p in paths] == [
            "tulu-3-sft-mixture", "smoltalk", "opencoder-sft-stage1", "opencoder-sft-stage2",
        ]  # fmt: skip
        assert [s.assistant_contains for s in config.data.sources] == [
            None,
            None,
            "python",
            "python",
        ]


def test_a_wrong_value_is_caught(configs):
    # The checker itself: a documented value that differs from the config fails.
    with pytest.raises(AssertionError, match="data.batch_size"):
        test_each_row_holds_in_both_cluster_configs(
            configs, ("x", "y", "`data.batch_size`", "`11` / `8`")
        )
