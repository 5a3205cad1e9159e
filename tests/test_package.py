"""The package's shape: no import cycles, library code never imports the CLI, lazy top level."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tide_lightning

PACKAGE = Path(tide_lightning.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], top_level_only: bool) -> set[str]:
    """Project modules imported by ``path`` (module level only when ``top_level_only``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules, top_level_only) - {name} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # importing a package runs its __init__, which is an edge to the package itself
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    # function-level imports count too: a cycle deferred into a function is still a cycle
    graph = _graph(top_level_only=False)
    # ``pkg.sub`` imported from inside ``pkg/__init__`` is the package's own layout, not a cycle
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not (name + ".").startswith(d + ".")}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_library_code_never_imports_the_cli():
    graph = _graph(top_level_only=False)
    importers = sorted(
        name
        for name, deps in graph.items()
        if "tide_lightning.cli" in deps and name not in ("tide_lightning.__main__",)
    )
    assert importers == []


def test_method_package_imports_no_lightning_and_no_config():
    for path in (PACKAGE / "method").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import lightning" not in text and "from lightning" not in text, path
        assert "tide_lightning.config" not in text, path


def test_top_level_import_and_help_do_not_import_torch():
    code = (
        "import sys, tide_lightning, tide_lightning.cli as c; c.build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_resolves_lazily():
    for name in tide_lightning.__all__:
        assert getattr(tide_lightning, name) is not None, name
