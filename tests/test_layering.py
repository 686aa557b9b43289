"""The package's layering (docs/architecture.md): no import circle, no upward import, and no
kernel or op module that imports the tuning package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tvm_sparse_rnn"
#: Layers, lowest first; a module may import its own layer and the ones below.
LAYERS = (
    ("errors", "optional", "bsr", "target", "cpu_threads", "testing", "_schedules", "signature"),
    ("ops",),
    ("kernels",),
    ("tuning",),
    ("transform", "frontend"),
    ("pipeline",),
    ("compile", "runtime"),
    ("demo", "zoo", "cli", "__main__", "__init__"),
)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Package modules ``path`` imports (relative imports resolved)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in [target, *names] if n.startswith("tvm_sparse_rnn"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tvm_sparse_rnn"))
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules and m != module}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


GRAPH = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_upward_import(module):
    if module == "tvm_sparse_rnn":  # the package face re-exports the public API
        return
    upward = [m for m in GRAPH[module] if m != "tvm_sparse_rnn" and _layer(m) > _layer(module)]
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_kernels_and_ops_do_not_import_tuning():
    offenders = {
        m: sorted(i for i in imports if i.startswith("tvm_sparse_rnn.tuning"))
        for m, imports in GRAPH.items()
        if m.startswith(("tvm_sparse_rnn.kernels", "tvm_sparse_rnn.ops"))
    }
    assert not {m: i for m, i in offenders.items() if i}


def test_no_import_circle():
    def visit(node, stack, done):
        stack.append(node)
        for nxt in GRAPH.get(node, ()):
            if nxt in stack:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in done:
                cycle = visit(nxt, stack, done)
                if cycle:
                    return cycle
        stack.pop()
        done.add(node)
        return None

    done: set[str] = set()
    for module in sorted(GRAPH):
        if module == "tvm_sparse_rnn" or module in done:
            continue
        cycle = visit(module, [], done)
        assert cycle is None, " -> ".join(cycle)
