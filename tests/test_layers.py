"""The package's architecture, enforced: imports only point down the layers, no cycles, no private names.

Layers (a module's layer is its first folder under ``napari_fcnn_deblur``, or its own name at the top):
``core`` → ``data`` / ``io`` → ``engine`` → ``api`` / ``baselines`` → ``training`` → ``cli`` and the
napari files.  Function-level imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_fcnn_deblur"

#: Which layers each layer may import from (itself included).
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "data": {"data"},
    "io": {"io", "core", "data"},
    "engine": {"engine", "core", "io", "data"},
    "api": {"api", "engine", "core", "io", "data"},
    "baselines": {"baselines", "engine", "core", "data"},
    "training": {"training", "engine", "core", "io", "data"},
    "cli": {"cli", "api", "engine", "core", "io", "data", "training", "baselines", "__init__"},
    "_widget": {"api", "engine", "core", "io", "data"},
    "_reader": {"io", "data", "engine"},
    "_sample_data": {"data"},
    "__init__": {"api", "core", "io"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> str:
    return module.split(".")[0]


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported package module, imported names, line) for every import of the package's own modules."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    if module == "__init__":
        here = []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("napari_fcnn_deblur"):
                target = node.module[len("napari_fcnn_deblur") :].lstrip(".")
            else:
                continue
            found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("napari_fcnn_deblur."):
                    found.append((a.name[len("napari_fcnn_deblur.") :], [], node.lineno))
    return found


MODULES = _modules()


def _resolve(target: str, names: list[str]) -> list[str]:
    """The modules an import statement really depends on (``from .io import models`` → ``io.models``)."""
    if target == "":
        return [n for n in names if n in MODULES] or ["__init__"]
    out = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return out or [target]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_point_down(module):
    layer = _layer(module)
    assert layer in ALLOWED, f"{module}: layer {layer!r} is not in the architecture (tests/test_layers.py)"
    for target, names, line in _imports(module, MODULES[module]):
        for dep in _resolve(target, names):
            assert _layer(dep) in ALLOWED[layer], f"{module}:{line} imports {dep} (layer {_layer(dep)!r} is not below {layer!r})"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_across_modules(module):
    for target, names, line in _imports(module, MODULES[module]):
        for dep in _resolve(target, names):
            if dep == module:
                continue
            private = [n for n in names if n.startswith("_") and not n.endswith("__")  # dunders are public
                       and f"{target}.{n}" not in MODULES]
            assert not private, f"{module}:{line} imports private names {private} of {dep}"


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for target, names, _ in _imports(m, path):
            for dep in _resolve(target, names):
                if dep in graph and dep != m and not m.startswith(dep + "."):  # a package's own __init__ is not a cycle
                    graph[m].add(dep)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_core_imports_nothing_but_torch_and_the_standard_library():
    for m, path in MODULES.items():
        if _layer(m) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for n in names:
                    assert n.split(".")[0] in {"torch", "math", "dataclasses", "collections", "typing", "itertools",
                                              "__future__"}, f"{m} imports {n}"
