"""Data flows one way inside avmae.platform.data: no module imports, however indirectly, one that imports it
back, counting imports inside functions and under TYPE_CHECKING (a lazy import only hides a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import avmae.platform.data as package

PACKAGE = package.__name__
FOLDER = Path(package.__file__).parent
MODULES = sorted(path.stem for path in FOLDER.glob("*.py") if path.stem != "__init__")


def _target(name: str) -> str | None:
    """The package module `name` (a module, or a name `__init__` resolves to one), else None."""
    if name in MODULES:
        return name
    return package._SUBMODULE.get(name)


def imports(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse((FOLDER / f"{module}.py").read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            found |= {name.removeprefix(f"{PACKAGE}.").split(".")[0] for name in names
                      if name.startswith(f"{PACKAGE}.")}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            absolute = base.removeprefix(PACKAGE) if base.startswith(PACKAGE) else None
            if base == "." or absolute == "":  # from . import x / from avmae.platform.data import x
                found |= {_target(alias.name) for alias in node.names} - {None}
            elif node.level == 1:
                found.add(base[1:].split(".")[0])
            elif absolute is not None:
                found.add(absolute.lstrip(".").split(".")[0])
    return found & set(MODULES)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_cycle_finder_sees_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_finder_reads_every_import_form():
    graph = {module: imports(module) for module in MODULES}
    assert {"config", "hygiene", "avdigits"} <= graph["loader"]  # from .x import, from . import x
    assert "decode" in graph["dataset"]  # an import inside a function


def test_no_import_circle_in_the_data_package():
    graph = {module: imports(module) for module in MODULES}
    assert cycle(graph) is None, f"import circle: {' -> '.join(cycle(graph))}"
    assert graph["config"] <= {"geometry"}, "config is settings only: it imports no pipeline module"
