"""docs/method.md stays the reference: its variant table is the registry, and every
``method.md §N`` the repository cites is a section that exists."""

from __future__ import annotations

import re
from pathlib import Path

from tide_lightning.method.variants import PIPELINES, VARIANTS

ROOT = Path(__file__).resolve().parents[1]
METHOD = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")


def test_variant_table_is_the_registry():
    section = METHOD.split("## 12. Variants", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \|", section, flags=re.M)
    table = {name: PIPELINES if where == "both" else (where,) for name, where in rows}
    assert table == {name: v.pipelines for name, v in VARIANTS.items()}


def test_every_cited_section_exists():
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", METHOD, flags=re.M))
    cited = {}
    files = [*ROOT.glob("tide_lightning/**/*.py"), *ROOT.glob("tests/**/*.py")]
    files += [*ROOT.glob("docs/*.md"), ROOT / "README.md", *ROOT.glob("conf/*.yaml")]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for ref in re.finditer(r"method\.md\)?[ ,]*((?:§\d+(?:\.\d+)?(?:, )?)+)", text):
            for number in re.findall(r"§(\d+(?:\.\d+)?)", ref.group(1)):
                cited.setdefault(number, path.relative_to(ROOT))
    assert cited, "no citations found: the pattern is wrong"
    missing = {n: str(p) for n, p in cited.items() if n not in sections}
    assert missing == {}
