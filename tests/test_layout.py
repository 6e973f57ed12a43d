"""The layout's contracts (.importlinter): one folder per pipeline stage importing only earlier ones,
a runtime side that never reaches PyTorch, and no import circles between modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("importlinter")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))  # the copy under test, ahead of the installed package
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", str(root / ".importlinter"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 2


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The contract is not decorative: one import of a later stage from an earlier one fails it."""
    shutil.copytree(ROOT / "edgeprune", tmp_path / "edgeprune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    target = tmp_path / "edgeprune" / "plan" / "macs.py"
    target.write_text(target.read_text() + "\n\ndef _upward():\n    from edgeprune.runtime import Runtime  # a later stage\n\n    return Runtime\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "edgeprune.plan.macs -> edgeprune.runtime" in result.stdout


def test_no_import_circles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("edgeprune")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in graph.modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"
