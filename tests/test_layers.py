"""The package's layers, read from the source: who may import whom, and no import cycles.

Every ``import dlrm...`` counts, at module level or inside a function (an import inside a
function is still a dependency; it only hides a cycle). Layers, lowest first:

    base       features, config, metrics, timing, allocator, extras, files, ops/
    models/, data/
    training/  (and export, compat)
    distributed/, bench/, compare, tune
    cli/       (command modules import only cli.common; cli/__init__ dispatches to all)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dlrm"

LAYER = {"features": 0, "config": 0, "metrics": 0, "timing": 0, "allocator": 0, "extras": 0,
         "files": 0, "ops": 0,
         "models": 1, "data": 1, "training": 2, "export": 2, "compat": 2,
         "distributed": 3, "bench": 3, "compare": 3, "tune": 3, "cli": 4,
         "__main__": 5}
# Peers that must not depend on each other.
PEERS = [("models", "data"), ("distributed", "bench"), ("distributed", "compare"),
         ("bench", "compare"), ("tune", "compare"), ("tune", "bench"), ("tune", "distributed")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every dlrm module ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dlrm"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dlrm"):
            for alias in node.names:  # `from dlrm.x import y` where y may be a module
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known}


def top(name: str) -> str:
    """The layer key of a module: ``dlrm.models.dlrm`` -> ``models``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "dlrm"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer(graph):
    assert {top(m) for m in graph} - {"dlrm"} <= set(LAYER), sorted({top(m) for m in graph})


def test_no_module_imports_a_layer_above_it_or_a_peer(graph):
    wrong = []
    for module, targets in graph.items():
        if module == "dlrm":  # the package facade re-exports public names
            continue
        for target in targets:
            a, b = top(module), top(target)
            if b == "dlrm" or a == b:
                continue
            if LAYER[b] > LAYER[a] or (a, b) in PEERS or (b, a) in PEERS:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_cli_modules_share_only_the_common_module(graph):
    wrong = [f"{m} -> {t}" for m, targets in graph.items() if m.startswith("dlrm.cli.")
             and m != "dlrm.cli.common" for t in targets
             if t.startswith("dlrm.cli") and t != "dlrm.cli.common"]
    assert not wrong, wrong


def test_no_import_cycles(graph):
    """Depth-first search for a cycle among modules (package facades' re-exports aside)."""
    edges = {m: {t for t in ts if t != "dlrm"} for m, ts in graph.items() if m != "dlrm"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_function_level_imports(tmp_path):
    """The rules would be blind if imports inside functions were not read."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from dlrm.training import loop\n")
    assert imports(source, {"dlrm.training", "dlrm.training.loop"}) == {"dlrm.training.loop"}
