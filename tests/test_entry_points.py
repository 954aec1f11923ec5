"""Every module with a main() runs it under `python -m`: `python -m autolora.bundle.build OUT` used to exit 0
having done nothing, since only autolora/bundle/__main__.py called its main."""

from __future__ import annotations

import ast
from pathlib import Path

import autolora

PACKAGE = Path(autolora.__file__).parent


def _calls_main_under_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return any("main(" in ast.unparse(stmt) for stmt in node.body)
    return False


def test_every_module_with_a_main_function_calls_it_when_run_as_a_module():
    modules = [path for path in sorted(PACKAGE.rglob("*.py")) if path.name != "__main__.py"]
    with_main = {path: ast.parse(path.read_text()) for path in modules}
    with_main = {path: tree for path, tree in with_main.items()
                 if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)}
    assert len(with_main) >= 15  # the analysis, bench and CLI tools: the test sees them
    silent = [str(path.relative_to(PACKAGE)) for path, tree in with_main.items() if not _calls_main_under_guard(tree)]
    assert silent == []
