"""The readout-retrain table: synthetic run folders with known scores and ranks in, the known rows out."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from autolora.analysis import readout_retrain
from autolora.errors import ConfigError

NAMES = ["m.0.q", "m.0.v", "m.1.q", "m.1.v"]


def _run(folder, name, *, seed, accuracy, ranks, params, method="autolora", readouts=None, lr=4e-4, r=None,
         readout=None):
    """A finished run folder: metrics.json, config.yaml and, for a search (readouts given), ranks.json."""
    path = folder / name
    path.mkdir(parents=True)
    metrics = {"task": "glue/sst2", "model": "minilm", "method": method, "seed": seed, "main_metric": "accuracy",
               "n_train": 480, "n_dev": 872, "ranks": dict(zip(NAMES, ranks, strict=True)), "device": "cpu",
               "git_commit": "abc1234", "started_at": "2026-12-07T10:00:00+00:00",
               "retrain": {"dev": {"accuracy": accuracy}, "trainable_params": params, "wall_time_s": 1.0,
                           "steps": 60}}
    settings = {"method": method, "seed": seed, "retrain": {"lr": lr, "epochs": 2}, "lora": {"r": r or 8},
                "search": {"alpha_norm": "softmax", "eta": 1e-4, "ranks_file": None, "ranks_readout": readout}}
    if readouts is not None:
        metrics["search"] = {"wall_time_s": 1.0, "steps": 15, "threshold": 0.125}
        every = {key: dict(zip(NAMES, value, strict=True)) for key, value in readouts.items()}
        (path / "ranks.json").write_text(json.dumps({"ranks": every["gates"], "readouts": every, "threshold": 0.125,
                                                     "alpha": {n: [0.125] * 8 for n in NAMES}}))
    elif method == "autolora":
        settings["search"]["ranks_file"] = f"/runs/s{seed}/gates/ranks.json"
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.yaml").write_text(yaml.safe_dump(settings))


def _study(folder, lr_of_one=4e-4):
    """Three seeds. Budget beats LoRA r=4 by +2, +3, +4 pp; released's ranks equal gates' in seed 2 (no run of
    its own there); energy's are the same ranks in every seed (agreement 1), those of LoRA r=1 in seed 2."""
    gates = [[4, 4, 3, 5], [3, 4, 4, 4], [5, 3, 4, 4]]
    budget = [[8, 6, 2, 0], [8, 5, 3, 0], [7, 6, 3, 0]]
    released = [[2, 2, 2, 3], [1, 2, 2, 2], gates[2]]
    energy = [[1, 1, 1, 1]] * 3
    for s in range(3):
        readouts = {"gates": gates[s], "released": released[s], "energy": energy[s], "budget": budget[s]}
        _run(folder, f"s{s}/gates", seed=s, accuracy=0.80 + s / 100, ranks=gates[s], params=3000,
             readouts=readouts)
        _run(folder, f"s{s}/budget", seed=s, accuracy=0.82 + 2 * s / 100, ranks=budget[s], params=3000,
             readout="budget", lr=lr_of_one if s == 1 else 4e-4)
        if s != 2:
            _run(folder, f"s{s}/energy", seed=s, accuracy=0.75, ranks=energy[s], params=1000, readout="energy")
        else:
            _run(folder, f"s{s}/lora_r1", seed=s, accuracy=0.75, ranks=energy[s], params=1000, method="lora", r=1)
        if s != 2:
            _run(folder, f"s{s}/released", seed=s, accuracy=0.70, ranks=released[s], params=1500, readout="released")
        _run(folder, f"s{s}/lora_r4", seed=s, accuracy=0.80 + s / 100, ranks=[4] * 4, params=3100, method="lora", r=4)
        _run(folder, f"s{s}/lora_r2", seed=s, accuracy=0.78, ranks=[2] * 4, params=1600, method="lora", r=2)


def _rows(text: str) -> dict[str, list[str]]:
    return {cells[0]: cells for line in text.splitlines() if line.startswith("| ") and not line.startswith("| arm")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}


def test_paired_difference_is_students_t_over_seeds():
    """Differences 2, 3, 4: mean 3, sd 1, t = 3 / (1 / sqrt 3) = 5.196 on 2 df, p = 0.0351; equal differences
    have no t."""
    d = readout_retrain.paired(readout_retrain.np.array([0.82, 0.84, 0.86]),
                               readout_retrain.np.array([0.80, 0.81, 0.82]))
    assert d["mean"] == pytest.approx(0.03) and d["sd"] == pytest.approx(0.01)
    assert d["t"] == pytest.approx(3 * math.sqrt(3)) and d["p"] == pytest.approx(0.0351, abs=1e-4)
    flat = readout_retrain.paired(readout_retrain.np.array([0.9, 0.8]), readout_retrain.np.array([0.8, 0.7]))
    assert flat["t"] is None and flat["p"] is None


def test_the_table_from_run_folders(tmp_path):
    """Each readout's row pairs with the uniform arm nearest in parameters (budget, gates: r=4; released, energy:
    r=2), a readout whose ranks equal another's in a seed shares that seed's run, and agreement is over seeds."""
    _study(tmp_path)
    rows = _rows(readout_retrain.section([tmp_path], [str(tmp_path)]))
    assert list(rows) == ["gates (paper)", "released", "ΔW energy 90%", "ΔW global budget", "LoRA r=2", "LoRA r=4"]
    budget = rows["ΔW global budget"]
    assert budget[1] == "84.0 ± 2.0" and budget[2].startswith("3,000 ")
    assert budget[3] == "+3.00 ± 1.00 vs LoRA r=4; t +5.20, p 0.04"
    assert rows["gates (paper)"][3] == "+0.00 ± 0.00 vs LoRA r=4"  # equal scores: no t
    assert rows["released"][3] == "-4.00 ± 6.93 vs LoRA r=2; t -1.00, p 0.42"  # -8, -8, +4
    assert rows["ΔW energy 90%"][3] == "-3.00 ± 0.00 vs LoRA r=2"
    assert rows["released"][7] == "70.0, 70.0, 82.0; seed 2 = gates (paper)'s run"
    assert rows["ΔW energy 90%"][6].startswith("1.00 ") and rows["ΔW energy 90%"][5] == "— (a seed constant)"
    assert rows["ΔW energy 90%"][7] == "75.0, 75.0, 75.0; seed 2 = LoRA r=1's run"  # r=1: seed 2 only, no row
    assert rows["ΔW global budget"][5] == "+1.00 (< 0.001)" and rows["LoRA r=4"][3] == "—"  # one order


def test_arms_that_differ_in_more_than_their_ranks_are_refused(tmp_path):
    """A retrain at another learning rate would compare recipes, not readouts: one line naming the key."""
    _study(tmp_path, lr_of_one=1e-3)
    with pytest.raises(ConfigError, match=r"retrain.lr=0.00.* but .*retrain.lr=0.00.*must differ in their ranks only"):
        readout_retrain.section([tmp_path], [str(tmp_path)])


def test_the_command_line_errors_in_one_line(tmp_path, capsys):
    """No folder, or a folder without runs: exit 2 and one error line."""
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(SystemExit) as stop:
            readout_retrain.main([str(folder)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


def test_write_replaces_only_its_section(tmp_path):
    """--write keeps the other sections of the page and replaces this one on a second write."""
    _study(tmp_path / "runs")
    page = tmp_path / "page.md"
    page.write_text(f"# title\n\n## Before\n\nkeep\n\n{readout_retrain.SECTION}\n\nold\n\n## After\n\nkeep too\n")
    readout_retrain.main([str(tmp_path / "runs"), "--write", str(page)])
    text = page.read_text()
    assert "old" not in text and "keep\n" in text and "## After\n\nkeep too" in text
    assert text.count(readout_retrain.SECTION) == 1 and "| ΔW global budget | 84.0 ± 2.0 |" in text


def test_a_search_variant_pairs_with_uniform_runs_in_another_folder(tmp_path):
    """The searches in one folder ran under global_softmax; the retrains at their readouts (no search: their
    search.* keys are not read) and the uniform arms elsewhere pass; two searches that differ in a search key
    are still refused; --title heads the section."""
    _study(tmp_path / "a")
    for path in (tmp_path / "a").glob("s*/gates/config.yaml"):
        path.write_text(path.read_text().replace("alpha_norm: softmax", "alpha_norm: global_softmax"))
    for arm in ("lora_r4", "lora_r2"):
        for s in range(3):
            (tmp_path / "a" / f"s{s}" / arm).rename(tmp_path / f"uniform_s{s}_{arm}")
    (tmp_path / "u").mkdir()
    for path in tmp_path.glob("uniform_*"):
        path.rename(tmp_path / "u" / path.name)
    text = readout_retrain.section([tmp_path / "a", tmp_path / "u"], ["a", "u"], "## Under global softmax")
    assert text.startswith("## Under global softmax")
    assert set(_rows(text)) >= {"ΔW global budget", "LoRA r=4"}
    other = tmp_path / "a" / "s1" / "gates" / "config.yaml"
    other.write_text(other.read_text().replace("alpha_norm: global_softmax", "alpha_norm: softmax"))
    with pytest.raises(ConfigError, match="search.alpha_norm"):
        readout_retrain.section([tmp_path / "a", tmp_path / "u"], ["a", "u"])
