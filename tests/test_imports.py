"""The package's import graph: no cycles between modules, and jaxpt imports inside functions only where start-up
time needs them (the command line imports jax only for the subcommand that runs)."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxpt")
# Function-local jaxpt imports allowed, and why: `jaxpt --help` and the hugepages re-exec (which must happen
# before jax is imported) stay fast and light, so each subcommand imports what it runs.
LOCAL_IMPORTS_ALLOWED = {"jaxpt.cli"}


def _modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _imports(tree: ast.Module, modules: dict[str, str], top_level: bool) -> set[str]:
    """jaxpt modules imported at module level (``top_level``) or inside functions (not ``top_level``)."""
    found = set()
    nodes = tree.body if top_level else [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    for node in nodes if top_level else [m for f in nodes for m in ast.walk(f)]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(ast.parse(open(p).read()), modules, top_level=True) for m, p in modules.items()}
    for m, targets in graph.items():  # importing a.b.c runs a and a.b first (unless m is inside them already)
        own = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)}
        for t in list(targets):
            parts = t.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts))} - own - {m}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])


def test_function_local_jaxpt_imports_only_where_start_up_needs_them():
    modules = _modules()
    local = {m for m, p in modules.items() if _imports(ast.parse(open(p).read()), modules, top_level=False)}
    assert local <= LOCAL_IMPORTS_ALLOWED, sorted(local - LOCAL_IMPORTS_ALLOWED)
