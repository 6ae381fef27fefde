"""Import hygiene: no import cycles between capsal's modules, and ``import capsal`` stays cheap (no Lightning)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from itertools import pairwise
from pathlib import Path

import capsal

PACKAGE_DIR = Path(capsal.__file__).resolve().parent
HEAVY = ("lightning", "lightning.pytorch", "pytorch_lightning")


def module_names(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` file under ``package_dir`` (``__init__`` -> package)."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is one of the modules, else its longest prefix that is (None outside the package)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The capsal modules one import statement names (resolving relative imports and ``from pkg import submodule``)."""
    if isinstance(node, ast.Import):
        return {m for alias in node.names if (m := _known(alias.name, modules))}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    if source not in modules:  # not capsal, or a name the package does not have: the longest known prefix
        known = _known(source, modules)
        return {known} if known else set()
    return {f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names}


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, dict[str, int]]:
    """Module -> {imported capsal module: first line}; every import counts, at module level or inside functions,
    methods and ``if TYPE_CHECKING`` blocks. Importing ``a.b.c`` is an edge to ``a.b.c`` alone (no parent edges)."""
    modules = module_names() if modules is None else modules
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, module, path.name == "__init__.py", modules):
                    edges.setdefault(target, node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def shortest_cycle(graph: dict[str, dict[str, int]], start: str, members: set[str]) -> list[str]:
    """A shortest path ``start -> ... -> start`` inside one strongly connected component."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if nxt in members and nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start} is on no cycle")


def import_cycles(graph: dict[str, dict[str, int]]) -> list[tuple[list[str], list[str]]]:
    """(members, one shortest cycle) per strongly connected component of more than one module, and per
    self-import."""
    cycles = []
    for component in strongly_connected(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            cycles.append((component, shortest_cycle(graph, component[0], set(component))))
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in pairwise(cycle)) + f" -> {cycle[-1]}"


def test_the_graph_resolves_relative_and_submodule_imports(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "from pkg.sub import thing\n",
        "a.py": "from . import b\nfrom .sub import leaf, NAME\n",
        "b.py": "def late():\n    import pkg.sub.leaf\n",
        "sub/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\nNAME = 1\n",
        "sub/leaf.py": "import os\nfrom .. import a\n",
        "sub/thing.py": "import pkg.sub.thing\n",  # a self-import
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    graph = import_graph(module_names(package))
    assert {m: set(edges) for m, edges in graph.items()} == {
        "pkg": {"pkg.sub.thing"},  # no implicit edge to the parent package pkg.sub
        "pkg.a": {"pkg.b", "pkg.sub.leaf", "pkg.sub"},
        "pkg.b": {"pkg.sub.leaf"},
        "pkg.sub": {"pkg.a"},
        "pkg.sub.leaf": {"pkg.a"},
        "pkg.sub.thing": {"pkg.sub.thing"},
    }
    assert sorted(map(sorted, strongly_connected(graph))) == [
        ["pkg"],
        ["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.leaf"],
        ["pkg.sub.thing"],
    ]
    assert sorted(import_cycles(graph)) == [
        (["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.leaf"], ["pkg.a", "pkg.sub", "pkg.a"]),
        (["pkg.sub.thing"], ["pkg.sub.thing", "pkg.sub.thing"]),
    ]
    assert describe(["pkg.a", "pkg.sub", "pkg.a"], graph) == "pkg.a (line 2) -> pkg.sub (line 3) -> pkg.a"


def test_capsal_has_no_import_cycles():
    graph = import_graph()
    cycles = import_cycles(graph)
    report = [
        (f"{len(members)} modules import each other: {', '.join(members)}" if len(members) > 1 else members[0])
        + f"\n  e.g. {describe(cycle, graph)}"
        for members, cycle in cycles
    ]
    assert not cycles, "import cycles between capsal's modules:\n" + "\n".join(report)


def test_importing_capsal_loads_no_lightning():
    script = (
        "import sys, capsal\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert capsal.__version__ == '0.1.0'\n"
        "vocab = capsal.Vocabulary(['a', 'red', 'circle'])\n"
        "assert vocab.stoi['red'] == 5\n"
        "assert callable(capsal.check_protocol)\n"
        "import capsal.models.protocol\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PACKAGE_DIR.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_lazy_models_package_keeps_its_public_names():
    import capsal.models as models

    for name in models.__all__:
        assert getattr(models, name).__name__ == name
        assert name in dir(models)
