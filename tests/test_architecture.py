"""The architecture as tests: the import contract of pyproject.toml, and the rules of docs/architecture.md
that an import graph cannot express (function length, where networks are built and trained)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "nnlab"
MAX_FUNCTION_LINES = 60


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            for path in sorted(PACKAGE.rglob("*.py"))]


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of code of a function: its body without the docstring, blank lines and comment-only lines."""
    body = function.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        if len(body) == 1:
            return 0
        first = body[1]
    start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))])
    return sum(1 for line in lines[start - 1:function.end_lineno]
               if line.strip() and not line.strip().startswith("#"))


def test_code_lines_counts_code_only():
    source = 'def f():\n    """Doc\n    string."""\n    # why\n\n    a = 1\n    return a\n'
    function = ast.parse(source).body[0]
    assert code_lines(function, source.splitlines()) == 2


def test_import_contract_is_kept():
    """pyproject.toml's [tool.importlinter]: layers point down, private modules stay home, no circles."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint is not None, "import-linter is part of the dev extra: pip install -r requirements.txt"
    proc = subprocess.run([lint, "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout


def test_no_function_is_longer_than_60_lines_of_code():
    long = []
    for path, tree in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(node, lines)
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these by job (docs/architecture.md):\n" + "\n".join(long)


# Building or training a network for a run happens in nnlab.runs only (model.py defines the class).
_RUN_ONLY_CALLS = {"AdvancedNeuralNetwork", "train_with_tracking", "resume_training"}


@pytest.mark.parametrize("name", sorted(_RUN_ONLY_CALLS))
def test_networks_are_built_and_trained_in_the_run_layer_only(name):
    found = []
    for path, tree in _modules():
        if path.is_relative_to(PACKAGE / "runs"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if called == name:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"{name} called outside nnlab.runs: {found}"


def test_no_two_modules_import_each_other():
    """Direct imports only (the contract's acyclic check is between siblings): a package's __init__
    and its own submodule count too."""
    import grimp

    graph = grimp.build_graph("nnlab", cache_dir=None)
    mutual = sorted({tuple(sorted((a, b))) for a in graph.modules
                     for b in graph.find_modules_directly_imported_by(a)
                     if a in graph.find_modules_directly_imported_by(b)})
    assert not mutual, mutual
