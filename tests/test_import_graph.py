"""The import graph of pathkl, studies and proofs_check, read from the source with ``ast``.

Layers: the library (``pathkl`` outside ``pathkl.cli``) imports nothing from ``pathkl.cli``,
``studies`` or ``proofs_check``; the graph of every import, module-level and function-local alike,
has no cycle (so no function-local import is there to dodge one). Function-local imports are allowed
in ``pathkl.cli`` only, where they keep ``--help`` from loading torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pathkl", "studies", "proofs_check")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement in ``module`` names (a ``from X import y`` counts as
    ``X.y`` where that is a module, else ``X``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] not in PACKAGES:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level, function-local) project imports of ``module`` (those under ``TYPE_CHECKING`` skipped)."""
    tree = ast.parse(MODULES[module].read_text())
    top, local = set(), set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                (local if in_function else top).update(_resolve(module, child))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return top, local


GRAPH = {m: _imports(m) for m in MODULES}


def _library(module: str) -> bool:
    return module.split(".")[0] == "pathkl" and not module.startswith("pathkl.cli") and module != "pathkl.__main__"


def test_the_graph_is_read():
    assert "pathkl.pathspace" in GRAPH["pathkl.rates"][0]
    assert "pathkl.references" in GRAPH["pathkl.rules"][0]
    assert any(m.startswith("pathkl.") for m in GRAPH["pathkl.cli.kl"][1])  # lazy, inside run()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _library(m)))
def test_library_imports_no_layer_above_it(module):
    top, local = GRAPH[module]
    above = sorted(m for m in top | local if not _library(m))
    assert not above, f"{module} imports {above}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("pathkl.cli")))
def test_function_local_imports_only_in_the_cli(module):
    assert not GRAPH[module][1], f"{module} imports {sorted(GRAPH[module][1])} inside a function"


def _cycle() -> list[str] | None:
    """A cycle of the full import graph, if there is one (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m][0] | GRAPH[m][1]):
            if n not in GRAPH:
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle)
