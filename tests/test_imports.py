"""Every module imports on its own, and no two files import each other, directly or through others.

The graph counts every import statement of the project's packages, including those inside functions and under
`TYPE_CHECKING` (a late import is still a dependency); `from pkg import mod` is an edge to `pkg.mod`.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sorl", "agents", "envs", "runner", "experiments", "cli")
# Each layer may import only the layers before it (agents and envs are side by side: neither imports the other).
LAYERS = (("sorl",), ("agents", "envs"), ("runner",), ("experiments",), ("cli",))


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    deps.add(full if full in mods else node.module)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle_between_files():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, deps in graph.items():
        top = name.split(".")[0]
        out.setdefault(top, set()).update(d.split(".")[0] for d in deps if d.split(".")[0] != top)
    return out


def test_no_import_cycle_between_packages():
    assert cycles(package_graph(import_graph())) == []


def test_every_package_imports_only_the_layers_below_it():
    level = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
    for pkg, deps in package_graph(import_graph()).items():
        above = {d for d in deps if level[d] >= level[pkg]}
        assert not above, f"{pkg} imports {sorted(above)}, which are not below it in {LAYERS}"


def test_nothing_imports_the_cli():
    assert [
        name
        for name, deps in import_graph().items()
        if not name.startswith("cli") and any(d.startswith("cli") for d in deps)
    ] == []


def test_core_modules_import_nothing_above_them():
    # errors, validation, networks, shortcut math, the verifier, the agent contract and the baselines' shared
    # pieces form the bottom layer: agents and envs build on them, never the other way round.
    graph = import_graph()
    core = {name for name in graph if name.split(".")[0] == "sorl"}  # the whole `sorl` package is the core
    for name in core:
        assert graph[name] <= core, (name, graph[name] - core)
    for name, deps in graph.items():
        if name.startswith(("agents", "envs")):
            assert all(d.startswith(("agents", "envs")) or d in core for d in deps), (name, deps)


def test_the_command_line_starts_without_jax():
    # `sorl --help`, a refused flag or a sweep's dry run should answer in well under a second; importing jax
    # (as a module-level import of runner.online once did) takes seconds on a loaded machine.
    code = "import sys, cli.main; print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
