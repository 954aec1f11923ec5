"""autolora-agree (analysis/compare_seeds.py): ranks across search seeds, per readout and across tasks, from
the run folders' ranks.json; bad folders end in one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autolora.analysis import compare_seeds

NAMES = [f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")]


def finished(folder, task, seed, ranks, budget, names=NAMES):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"task": task, "seed": seed}))
    (folder / "ranks.json").write_text(json.dumps({
        "format_version": 1, "k": 8, "task": task, "seed": seed, "ranks": {n: ranks[i] for i, n in enumerate(names)},
        "readouts": {"budget": {n: budget[i] for i, n in enumerate(names)}},
        "update_spectra": {n: [1.0 + budget[i], 0.1] for i, n in enumerate(names)}}))
    return folder


@pytest.fixture
def sweep(tmp_path):
    """3 seeds of two tasks: the retrained ranks random per seed, the budget readout the same everywhere."""
    rng = np.random.default_rng(0)
    budget = [i % 5 for i in range(len(NAMES))]
    for task in ("glue/rte", "glue/mrpc"):
        for seed in range(3):
            finished(tmp_path / task.replace("/", "_") / str(seed), task, seed,
                     [int(r) for r in rng.integers(1, 9, len(NAMES))], budget)
    return tmp_path


def test_a_readout_that_repeats_is_told_from_one_that_does_not(sweep, capsys):
    compare_seeds.main([str(sweep)])
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| glue/")}
    assert "repeat across seeds" in rows[("glue/rte", "budget")] and "+1.00" in rows[("glue/rte", "budget")]
    assert "do not repeat" in rows[("glue/rte", "ranks")] and "do not repeat" in rows[("glue/mrpc", "ranks")]
    assert rows[("glue/rte", "budget")].rstrip().endswith("| +1.00 |")  # the others' consensus predicts each seed
    consensus = float(rows[("glue/rte", "ranks")].split("|")[-2])  # random ranks: the consensus predicts nothing
    assert abs(consensus) < 0.5
    cross = {row[0]: row for row in compare_seeds.across_tasks(compare_seeds.collect(compare_seeds.find_runs([sweep])))}
    assert cross["budget"][1:] == ["+1.00", "+1.00"]  # the same across tasks: the model's structure


def test_bad_folders_end_in_one_line_and_exit_2(tmp_path, capsys):
    budget = [1 + i % 8 for i in range(len(NAMES))]
    cases = {}
    one = finished(tmp_path / "one" / "a", "glue/rte", 0, budget, budget)
    cases["one seed"] = ([one], "one seed only")
    twice = tmp_path / "twice"
    finished(twice / "a", "glue/rte", 0, budget, budget)
    finished(twice / "b", "glue/rte", 0, budget, budget)
    cases["the same seed twice"] = ([twice], "both glue/rte seed 0")
    other = tmp_path / "other"
    finished(other / "a", "glue/rte", 0, budget, budget)
    finished(other / "b", "glue/rte", 1, budget, budget, names=[n + "x" for n in NAMES])
    cases["another model"] = ([other], "adapts other matrices")
    cases["no runs"] = ([tmp_path / "empty"], "no finished autolora run")
    (tmp_path / "empty").mkdir()
    cases["missing"] = ([tmp_path / "nowhere"], "no such folder")
    cases["a file"] = ([one / "metrics.json"], "not a folder")

    def with_metrics(name, text):
        """Two seeds of one task, the second's metrics.json replaced by `text`."""
        finished(tmp_path / name / "a", "glue/rte", 0, budget, budget)
        finished(tmp_path / name / "b", "glue/rte", 1, budget, budget)
        (tmp_path / name / "b" / "metrics.json").write_text(text)
        return tmp_path / name

    cases["a torn metrics.json"] = ([with_metrics("broken", "{ half")], "not a metrics file")
    cases["a metrics.json that is a list"] = ([with_metrics("listed", "[]")], "not a JSON object")
    cases["a seed that is not a number"] = ([with_metrics("odd", '{"seed": "first"}')], "not what a search writes")
    bad_rank = tmp_path / "bad_rank"
    finished(bad_rank / "a", "glue/rte", 0, budget, budget)
    finished(bad_rank / "b", "glue/rte", 1, [99] * len(NAMES), budget)
    cases["a rank above k"] = ([bad_rank], "above k")
    for name, (folders, message) in cases.items():
        with pytest.raises(SystemExit) as stop:
            compare_seeds.main([str(f) for f in folders])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, (name, err)


def test_a_sweep_ends_with_one_line_per_task_on_whether_its_ranks_repeat(sweep, tmp_path):
    """Random retrained ranks, a budget readout equal in every seed: the line says which repeats; a sweep with
    no search, or one search setting twice per seed, gets no line."""
    lines = compare_seeds.sweep_lines(sweep)
    assert len(lines) == 2 and all(line.startswith("seeds    glue/") for line in lines)
    assert "the ranks do not repeat" in lines[0] and "ΔW budget readout: repeat across seeds (rho +1.00)" in lines[0]
    assert lines[0].endswith(f"autolora-agree {sweep}")
    (tmp_path / "none").mkdir()
    assert compare_seeds.sweep_lines(tmp_path / "none") == []
    budget = [1 + i % 8 for i in range(len(NAMES))]
    finished(tmp_path / "twice" / "a", "glue/rte", 0, budget, budget)
    finished(tmp_path / "twice" / "b", "glue/rte", 0, budget, budget)
    assert compare_seeds.sweep_lines(tmp_path / "twice") == []
