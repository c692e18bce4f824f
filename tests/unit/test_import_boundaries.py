"""The product never imports the benchmarks: no module under ``extproc/`` or ``a2a_service/`` imports
``benchmarks``, at module level or inside a function (the simulator may import the product, not the reverse).
What both need (a tokenizer) is an interface with implementations in the product (``extproc/tokenization``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("extproc", "a2a_service")
FORBIDDEN = "benchmarks"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))  # `from benchmarks import peers` -> "benchmarks"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
            # importlib.import_module("benchmarks...") / __import__("benchmarks...") with a literal name
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                found.append((node.lineno, str(node.args[0].value)))
    return found


def _offenders() -> list[str]:
    out: list[str] = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            for line, module in _imported_modules(tree):
                if module == FORBIDDEN or module.startswith(FORBIDDEN + "."):
                    out.append(f"{rel}:{line} imports {module}")
    return out


def test_the_ast_walk_finds_every_import_form() -> None:
    code = (
        "import benchmarks.simulator\n"
        "from benchmarks.simulator.tokenizer import encode\n"
        "def f():\n"
        "    from benchmarks import peers\n"
        "    import importlib; importlib.import_module('benchmarks.stack')\n"
    )
    modules = {m for _, m in _imported_modules(ast.parse(code))}
    assert {"benchmarks.simulator", "benchmarks.simulator.tokenizer", "benchmarks", "benchmarks.stack"} <= modules


def test_no_product_module_imports_benchmarks() -> None:
    assert _offenders() == []


def test_importing_the_product_loads_no_benchmarks_module() -> None:
    """Indirectly either: importing every product module (as the servers do) loads nothing from benchmarks."""
    code = (
        "import importlib, pkgutil, sys\n"
        "for pkg in ('extproc', 'a2a_service'):\n"
        "    base = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(base.__path__, pkg + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m == 'benchmarks' or m.startswith('benchmarks.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
