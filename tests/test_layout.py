"""The layout of ../shared/DESIGN.md, checked on the source: no import cycles among dlx's
modules, no named backend imported outside ``dlx/_device.py``, no device-type tests outside
it, and files a screenful or a few long. Each check also runs once on a bad example, so it
is known to fail when it should."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dlx": ROOT / "dlx", "dlx.backends": ROOT / "backends"}  # installed name -> folder
DEVICE_FILE = ROOT / "dlx" / "_device.py"  # the one place that knows device types and backends
NAMED_BACKENDS = ("cpu", "cuda", "strict", "reference", "host_random")
DEVICE_TYPES = ("cpu", "cuda", "strict")
MAX_LINES = 450


def _modules(packages: dict) -> dict:
    """{module name: path} of every .py file under each package folder."""
    out = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _top_level_imports(tree: ast.AST):
    """Import nodes executed when the module is imported: not inside a function (lazy
    imports) or an ``if TYPE_CHECKING:`` block."""
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def _imported(module: str, path: Path, node, known) -> set[str]:
    """The known modules an import statement loads (``from a import b`` loads a.b when it
    is a module, else a; parent packages are left out: they are already being imported)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    base = node.module or ""
    if node.level:
        package = module if _is_package(path) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    out = set()
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            out.add(f"{base}.{alias.name}")
        elif base in known:
            out.add(base)
    return out


def import_graph(packages: dict) -> dict:
    """{module: set of modules it imports at module level}, among the packages' modules."""
    mods = _modules(packages)
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set()
        for node in _top_level_imports(tree):
            graph[name] |= _imported(name, path, node, mods) - {name}
    return graph


def find_cycle(graph: dict) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def named_backend_imports(path: Path) -> list[str]:
    """'line N: module' for every import (lazy ones too) of a named backend."""
    named = {f"dlx.backends.{b}" for b in NAMED_BACKENDS}
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and ast.unparse(node.func).split(".")[-1] in ("import_module", "__import__")):
            mods = [str(node.args[0].value)]
        hits = [m for m in mods if any(m == n or m.startswith(n + ".") for n in named)]
        if hits:
            bad.append(f"line {node.lineno}: {hits[0]}")
    return bad


def _type_name(expr: ast.expr) -> bool:
    """``type(x).__name__`` (or ``__qualname__``, ``__module__``)."""
    return (isinstance(expr, ast.Attribute) and expr.attr in ("__name__", "__qualname__", "__module__")
            and isinstance(expr.value, ast.Call) and ast.unparse(expr.value.func) == "type")


def device_type_tests(path: Path) -> list[str]:
    """'line N: why: comparison' for every comparison that tests a device's type: a
    ``.type`` compared with anything, anything compared with a device name ("cpu", "cuda",
    "cuda:N", "strict"), or ``type(x).__name__`` compared with a name written in the code
    (dispatch on a class name; comparing it with a name read from a checkpoint is fine)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        for side in node.comparators:  # x.type in ("cpu", "strict")
            if isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                sides += list(side.elts)
        literals = [e.value for e in sides if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        why = set()
        if any(isinstance(e, ast.Attribute) and e.attr == "type" for e in sides):
            why.add("compares a .type")
        if any(v in DEVICE_TYPES or v.startswith("cuda:") for v in literals):
            why.add("compares with a device name")
        if literals and any(map(_type_name, sides)):
            why.add("dispatches on type(...).__name__")
        if why:
            bad.append(f"line {node.lineno}: {', '.join(sorted(why))}: {ast.unparse(node)}")
    return bad


DLX_FILES = sorted((ROOT / "dlx").rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- the checks ---------------------------------------------------------------------------------
def test_no_import_cycles():
    graph = import_graph(PACKAGES)
    assert len(graph) > 40 and "dlx.cli" in graph and "dlx.backends.cuda" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", [p for p in DLX_FILES if p != DEVICE_FILE], ids=_rel)
def test_no_named_backend_outside_device(path):
    bad = named_backend_imports(path)
    assert not bad, (f"{_rel(path)} imports a named backend (only dlx/_device.py may; use "
                     f"dlx.device(...) and its .backend, or dlx._device.device_info): {bad}")


@pytest.mark.parametrize("path", [p for p in DLX_FILES if p != DEVICE_FILE], ids=_rel)
def test_no_device_type_tests_outside_device(path):
    bad = device_type_tests(path)
    assert not bad, (f"{_rel(path)} tests a device's type (only Device, in dlx/_device.py, "
                     f"may; ask the device or its backend instead): {bad}")


@pytest.mark.parametrize("path", [p for p in DLX_FILES if not {"apps", "cli"} & set(p.parts)],
                         ids=_rel)
def test_framework_does_not_import_the_applications(path):
    """dlx.apps is built on the framework; only the dlx command (dlx.cli) reaches into it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mods = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    mods += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    mods += [f"dlx.{a.name}" for n in ast.walk(tree)
             if isinstance(n, ast.ImportFrom) and n.module == "dlx" for a in n.names]
    bad = [m for m in mods if m == "dlx.apps" or m.startswith("dlx.apps.")]
    assert not bad, f"{_rel(path)} imports the applications: {bad}"


def too_long(path: Path) -> str | None:
    n = len(path.read_text().splitlines())
    return f"{n} lines (at most {MAX_LINES}): split it" if n > MAX_LINES else None


@pytest.mark.parametrize("path", DLX_FILES, ids=_rel)
def test_files_stay_short(path):
    assert not too_long(path), f"{_rel(path)} has {too_long(path)}"


def test_the_layout():
    """The framework and the applications built on it, where a newcomer looks for them."""
    dlx = ROOT / "dlx"
    for sub in ("models", "training", "cli", "apps/digits", "apps/viz", "nn/functional"):
        assert (dlx / sub / "__init__.py").exists(), sub
    for gone in ("gan.py", "digits.py", "viz.py", "models.py", "training.py", "cli.py"):
        assert not (dlx / gone).exists(), f"dlx/{gone} moved into a package"
    assert not (ROOT / "backends" / "cuda" / "selfcheck.py").exists()  # test code: tests/


# ---- each check fails on a bad example -----------------------------------------------------------
def _package(tmp_path, files: dict) -> dict:
    for rel, text in files.items():
        p = tmp_path / "pkg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {"pkg": tmp_path / "pkg"}


def test_cycle_finder_catches_a_cycle(tmp_path):
    pkgs = _package(tmp_path, {
        "__init__.py": "from pkg.a import f\n",
        "a.py": "from pkg import b\n\ndef f():\n    from pkg import c  # lazy: allowed\n",
        "b.py": "import os\nfrom .sub.d import g\n",
        "c.py": "from pkg import a\n",
        "sub/__init__.py": "",
        "sub/d.py": "from ..a import f\n",
    })
    graph = import_graph(pkgs)
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.b"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.d", "pkg.a"]
    (tmp_path / "pkg" / "sub" / "d.py").write_text("def g():\n    from ..a import f\n")
    assert find_cycle(import_graph(pkgs)) is None


def test_backend_and_device_type_scanners_catch_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import importlib\n"
        "from dlx.backends.base import Backend  # fine\n"
        "from dlx.backends import cuda\n"
        "def f(dev, x):\n"
        "    from dlx.backends.cpu.threads import threading_info\n"
        "    importlib.import_module('dlx.backends.strict')\n"
        "    if dev.type == 'cuda' or dev.type in ('cpu', 'strict') or str(dev) != 'cpu':\n"
        "        return type(x).__name__ == 'ndarray'\n"
        "    return x.shape == (1,) and 'a' in 'abc'\n")
    assert [b.split(":")[0] for b in named_backend_imports(bad)] == ["line 3", "line 5", "line 6"]
    found = device_type_tests(bad)
    assert [f.split(":")[0] for f in found] == ["line 7"] * 3 + ["line 8"], found
    assert "compares a .type" in found[0] and "type(...).__name__" in found[-1]
    ok = tmp_path / "ok.py"  # a class name compared with one read from a file is no dispatch
    ok.write_text("def check(header, opt):\n    return header['class'] != type(opt).__name__\n")
    assert device_type_tests(ok) == []


def test_line_limit_catches_a_long_file(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("x = 1\n" * MAX_LINES)
    assert too_long(long) is None
    long.write_text("x = 1\n" * (MAX_LINES + 1))
    assert too_long(long).startswith(f"{MAX_LINES + 1} lines")
