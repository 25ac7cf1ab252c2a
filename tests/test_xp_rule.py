"""The one rule of ../shared/DESIGN.md: layers, losses, optimizers and initialisers never
import numpy, cupy or numba; they reach arrays through the device's namespace."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RULED = [ROOT / "dlx" / "nn", ROOT / "dlx" / "optim", ROOT / "dlx" / "init.py"]
FORBIDDEN = {"numpy", "cupy", "numba", "cupyx", "array_api_strict"}


def _ruled_files():
    for p in RULED:
        yield from ([p] if p.is_file() else sorted(p.rglob("*.py")))


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            yield node.lineno, "__import__(...)"


@pytest.mark.parametrize("path", list(_ruled_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_array_library_imports(path):
    bad = [f"line {ln}: {mod}" for ln, mod in _imports(path)
           if mod.split(".")[0] in FORBIDDEN or mod == "__import__(...)"]
    assert not bad, f"{path.relative_to(ROOT)} imports an array library directly: {bad}"


def test_rule_covers_files():
    files = list(_ruled_files())
    assert len(files) >= 6, files  # nn modules, optim modules and init are all scanned


def test_scanner_catches_a_violation(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import numpy as np\nfrom cupy import zeros\n")
    assert [m for _, m in _imports(f)] == ["numpy", "cupy"]
