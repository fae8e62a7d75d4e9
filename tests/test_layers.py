"""The package's folders are layers: each imports only from the layers below it, and no module
imports itself back through others (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline_steps"
LAYERS = ("common", "spaces", "data", "supernet", "evaluation", "scores", "transforms", "methods", "report",
          "pipeline")
MAX_LINES = 280


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def layer(name: str) -> int:
    """The layer's place in LAYERS; modules at the package root sit on top."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


MODULES = modules()
GRAPH = {name: imports(name, path, MODULES) for name, path in MODULES.items()}


def test_every_folder_of_the_package_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_a_module_imports_only_its_own_layer_and_those_below(name):
    upward = sorted(m for m in GRAPH[name] if layer(m) > layer(name))
    assert not upward, f"{name} imports from a higher layer: {upward}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    found, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert not cycles(GRAPH)


def test_a_package_docstring_says_what_lives_there_and_what_it_may_import():
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text())) or ""
        assert "import" in doc.lower() and len(doc.splitlines()) <= 3, name


def test_no_module_is_longer_than_it_can_be_read_at_once():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The graph above is built right: an upward import and a two-module cycle are found."""
    fake = {"pipeline_steps.common.a": tmp_path / "a.py", "pipeline_steps.methods.b": tmp_path / "b.py"}
    fake["pipeline_steps.common.a"].write_text("def f():\n    from ..methods import b\n")
    fake["pipeline_steps.methods.b"].write_text("from ..common.a import f\n")
    a = imports("pipeline_steps.common.a", fake["pipeline_steps.common.a"], fake)
    b = imports("pipeline_steps.methods.b", fake["pipeline_steps.methods.b"], fake)
    assert a == {"pipeline_steps.methods.b"} and b == {"pipeline_steps.common.a"}
    assert layer("pipeline_steps.methods.b") > layer("pipeline_steps.common.a")
    graph = {"pipeline_steps.common.a": a, "pipeline_steps.methods.b": b, "pipeline_steps.methods.c": set()}
    assert cycles(graph) == [["pipeline_steps.common.a", "pipeline_steps.methods.b"]]
