"""The shape of the house (ARCHITECTURE.md): one-way imports, short modules, thin notebooks."""

import ast
import json

import pytest

from conftest import ROOT

LIB = sorted(p for p in (ROOT / "lib").glob("*.py") if p.name != "__init__.py")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FOUNDATION = {"paths": set(), "device": set(), "progress": set(), "schema": set(), "profiles": {"paths", "schema"},
              "results": {"paths"}, "workers": {"device"}}
MAX_MODULE_LINES, MAX_CELL_LINES = 400, 15


def lib_imports(path) -> set[str]:
    """Every lib module `path` imports, at top level or inside a function."""
    names = {p.stem for p in LIB}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lib":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lib.")}
    return (found & names) - {path.stem}


def test_lib_imports_form_no_cycle():
    graph = {p.stem: lib_imports(p) for p in LIB}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle in lib: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_foundation_modules_import_only_below_them():
    for name, allowed in FOUNDATION.items():
        assert lib_imports(ROOT / "lib" / f"{name}.py") <= allowed, name


@pytest.mark.parametrize("path", LIB, ids=lambda p: p.stem)
def test_module_is_short(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_cells_are_thin(nb):
    for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        lines = [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(lines) <= MAX_CELL_LINES, f"cell {i} has {len(lines)} code lines"
        defined = [type(n).__name__ for n in ast.walk(ast.parse(src))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defined, f"cell {i} defines {defined}: that belongs in lib"
