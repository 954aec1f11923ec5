"""The package's layers (README "Layout"): imports point down, nothing imports bench/, modules stay small,
and the run folder's contract has one home (layout.py) that conf/ agrees with."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO

PACKAGE = REPO / "src" / "autolora"
GROUND = "ground"  # the modules directly under src/autolora/: errors, layout, provenance, record, files, ...
# Which rooms each room may import (besides itself). runner may use analysis.figures alone: the run draws
# its ranks.png with the report's plotting code, which imports nothing of ours.
ALLOWED = {
    GROUND: {GROUND},
    "models": {GROUND},
    "engine": {GROUND},
    "method": {GROUND, "models", "engine"},
    "tasks": {GROUND, "engine"},
    "runner": {GROUND, "models", "engine", "method", "tasks", "analysis.figures"},
    "analysis": {GROUND, "method", "tasks"},
    "cli": {GROUND, "engine", "runner", "analysis"},
    "bench": {GROUND, "models", "engine", "method", "tasks", "runner"},
    "bundle": {GROUND, "models"},  # a dev tool like bench: nothing imports it
}
LIMIT = 400  # lines per module


def room(module: str) -> str:
    """autolora.method.search -> method; autolora.errors -> ground; autolora.analysis.figures -> itself."""
    parts = module.split(".")
    if module == "autolora.analysis.figures":
        return module.removeprefix("autolora.")
    if len(parts) < 2 or (PACKAGE / f"{parts[1]}.py").is_file():
        return GROUND
    return parts[1]


def imports(path: Path) -> set[str]:
    """The autolora modules a file imports (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autolora"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (PACKAGE.joinpath(*node.module.split(".")[1:], f"{alias.name}.py")).is_file())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("autolora"))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_nothing_imports_bench(path):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    own = GROUND if len(parts) == 1 else parts[0]
    if parts == ("__main__",):
        return  # python -m autolora: the console script itself
    bad = sorted(m for m in imports(path) if room(m) not in ALLOWED[own] | {own}
                 and not m.startswith(f"autolora.{own}."))
    assert not bad, f"{path.relative_to(PACKAGE)} ({own}) imports {bad}"


def test_the_rules_can_fail(tmp_path):
    """The check above sees an upward import (engine -> method) for what it is."""
    assert room("autolora.method.search") == "method" and "method" not in ALLOWED["engine"]
    assert room("autolora.errors") == GROUND and room("autolora.analysis.figures") == "analysis.figures"
    assert not any("bench" in allowed or "bundle" in allowed for allowed in ALLOWED.values())


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_under_the_line_limit(path):
    assert len(path.read_text().splitlines()) < LIMIT, f"{path.relative_to(PACKAGE)}: split it by concept"


def test_sweep_folder_names_leave_out_exactly_the_keys_layout_calls_run_only():
    """conf/config.yaml's exclude_keys (the sweep job folder names) hold the keys that change no result
    (layout.DRIVING_KEYS, layout.PATH_KEYS) plus paths and Hydra's own; nothing of layout's lists is missing."""
    from autolora import layout

    config = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    excluded = set(config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"])
    missing = (set(layout.DRIVING_KEYS) | set(layout.PATH_KEYS)) - excluded
    assert not missing, f"conf/config.yaml exclude_keys lacks {sorted(missing)}"


def test_every_citation_of_the_method_page_names_one_of_its_sections():
    """Docstrings and config comments cite docs/method.md §N; each such section exists, and nothing cites a
    document outside the repository (the PAPER/STYLE pages the project was started from)."""
    import re

    sections = set(re.findall(r"^## §(\d+)", (REPO / "docs" / "method.md").read_text(), flags=re.M))
    cited, outside = set(), []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "conf").rglob("*.yaml")]:
        text = path.read_text()
        cited.update(n for pair in re.findall(r"docs/method\.md §(\d+)(?:-§(\d+))?", text) for n in pair if n)
        outside += [str(path.relative_to(REPO))] if re.search(r"\b(PAPER|STYLE) §", text) else []
    assert cited and cited <= sections, sorted(cited - sections)
    assert not outside, outside
