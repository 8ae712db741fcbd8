"""The package's layers, read from its source: every import points down (or sideways within a layer),
and no two modules import each other through any chain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mpsl

ROOT = Path(mpsl.__file__).parent
# lowest first; a module may import its own layer and every layer before it
LAYERS: list[tuple[str, ...]] = [
    ("errors", "registry", "config", "files", "packaged", "devices", "progress"),
    ("data", "tasks"),
    ("models",),
    ("protocol", "checkpoints"),
    ("runtime", "parties"),
    ("analysis",),
    ("experiment", "deploy"),
    ("cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
GENERATED = {"mpsl.runtime.network.mpsl_pb2", "mpsl.runtime.network.mpsl_pb2_grpc"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """mpsl modules `name` imports, at the top or inside functions, resolved to modules (not packages'
    attributes)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mpsl")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mpsl":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found - {name, "mpsl"}


def _layer(module: str) -> int:
    top = module.split(".")[1]
    if top not in RANK:
        raise AssertionError(f"{module}: its top-level package {top!r} has no layer in tests/test_layers.py")
    return RANK[top]


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 50  # guard against a vacuous pass: the package was found
    for module in MODULES:
        if module != "mpsl":
            _layer(module)


@pytest.mark.parametrize("module", sorted(set(MODULES) - {"mpsl"} - GENERATED))
def test_a_module_imports_only_its_own_layer_or_lower(module: str) -> None:
    upward = [m for m in _imports(module) if _layer(m) > _layer(module)]

    assert not upward, f"{module} imports upward: {upward}"


def test_no_module_imports_itself_through_a_chain() -> None:
    graph = {m: {i for i in _imports(m) if i in MODULES and i != m} for m in MODULES}
    # a package's __init__ re-exports its modules; importing the package is not a cycle of theirs
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])

    assert sum(len(deps) for deps in graph.values()) > 100  # the graph was really built
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
