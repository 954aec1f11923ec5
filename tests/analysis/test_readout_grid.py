"""The pooled readout grid: the layout scripts/device_readouts.sh writes, with known scores, in; each task's
paired differences and the pooled Wilcoxon test out."""

from __future__ import annotations

import shutil

import pytest
from scipy import stats

from autolora.analysis import readout_grid
from autolora.errors import ConfigError
from tests.analysis.test_readout_retrain import _study


def _grid(root):
    """Two tasks under softmax (test_readout_retrain's study: budget beats LoRA r=4 by +2, +3, +4 pp), the
    second a copy; a global_softmax variant whose searches are the same runs but whose uniform arms live under
    softmax/ only."""
    _study(root / "softmax" / "rte")
    shutil.copytree(root / "softmax" / "rte", root / "softmax" / "mrpc")
    shutil.copytree(root / "softmax" / "rte", root / "global_softmax" / "rte",
                    ignore=shutil.ignore_patterns("lora_r*"))
    for path in (root / "global_softmax").rglob("gates/config.yaml"):
        path.write_text(path.read_text().replace("alpha_norm: softmax", "alpha_norm: global_softmax"))


def _rows(text):
    return {tuple(cells[:2]): cells for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| search")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_each_task_and_the_pooled_pairs(tmp_path):
    """budget: +3.0 pp on each task (vs r=4, 3000/3100 params), pooled over 6 pairs +3.00 with the Wilcoxon p of
    (2, 3, 4, 2, 3, 4); the global_softmax variant has rte only and takes its uniform arms from softmax/."""
    _grid(tmp_path)
    rows = _rows(readout_grid.section(tmp_path, "softmax", [str(tmp_path)]))
    budget = rows[("softmax", "ΔW global budget")]
    assert budget[2] == budget[3] == "+3.0 (r=4, 0.97x params), ρ +1.00"  # columns: mrpc, rte
    want = stats.wilcoxon([0.02, 0.03, 0.04] * 2).pvalue
    assert budget[4] == "+3.00 (6)" and budget[5] == f"{want:.3f}"
    assert rows[("softmax", "gates (paper)")][5] == "—"  # every difference 0: no test
    other = rows[("global_softmax", "ΔW global budget")]
    assert other[2] == "—" and other[3].startswith("+3.0 (r=4") and other[4] == "+3.00 (3)"


def test_a_variant_without_uniform_arms_and_a_missing_root_are_one_line(tmp_path, capsys):
    _grid(tmp_path)
    with pytest.raises(ConfigError, match=r"no folder 'uniform' for the uniform arms \(found: global_softmax, "
                                          r"softmax\)"):
        readout_grid.section(tmp_path, "uniform", [])
    for i in range(8):  # a root of many folders (the wrong one): the line names six and counts the rest
        (tmp_path / f"other{i}").mkdir()
    with pytest.raises(ConfigError, match=r"\(found: global_softmax, other0, .*, other4 and 4 more\)$"):
        readout_grid.section(tmp_path, "uniform", [])
    for i in range(8):
        (tmp_path / f"other{i}").rmdir()
    shutil.rmtree(tmp_path / "softmax" / "rte")
    shutil.copytree(tmp_path / "global_softmax" / "rte", tmp_path / "softmax" / "rte")
    with pytest.raises(ConfigError, match="no uniform LoRA arm"):
        readout_grid.section(tmp_path, "softmax", [])
    with pytest.raises(SystemExit) as stop:
        readout_grid.main([str(tmp_path / "missing")])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().startswith("error: ")
