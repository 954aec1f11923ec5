"""Sweeps: every point checked before the first job, a failing point listed at the end with its status, a
killed sweep resumed; a search that keeps nothing ends in one line."""

from __future__ import annotations

import json
import re
import sys

import pytest
from harness import (
    GOOD_ROWS,
    LONGER,
    TINY,
    events,
    glue_files,
    job,
    job_number,
    launch,
    many_rows,
)

from autolora.cli.main import main


def test_every_sweep_point_is_checked_before_the_first_job(tmp_path, capsys):
    """Defect 7: a bad value in any point of a -m sweep (sweeper params of an experiment file included) stops
    the command before a job runs, naming the point; nothing is created."""
    from autolora.cli.overrides import check_overrides

    sweep_dir = tmp_path / "sweep"
    for args, message in [(["seed=0,-1"], r"sweep point 1 of 2 \(seed=-1\): seed must lie in"),
                          (["retrain.max_grad_norm=1.0,-1", "seed=3,4"],
                           r"sweep point 2 of 4 \(retrain.max_grad_norm=-1 seed=3\): retrain.max_grad_norm")]:
        sys.argv = ["autolora-run", "-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"]
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and re.fullmatch(r"autolora-run: error: " + message + ".*", err), err
    assert not sweep_dir.exists()
    points = check_overrides(["-m", "experiment=smoke_sst2_tiny", "search.k=2,4"])
    assert [p.label for p in points] == [f"sweep point {i} of 4 (seed={s} search.k={k})"
                                         for i, (s, k) in enumerate([(0, 2), (0, 4), (1, 2), (1, 4)])]
    assert [p.cfg.seed for p in points] == [0, 0, 1, 1]


def test_sweep_points_sharing_a_folder_are_refused(tmp_path, capsys):
    """Two points whose hydra.sweep.subdir gives the same folder would write into one run: refused up front."""
    sys.argv = ["autolora-run", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=same"]
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "is also another point's" in capsys.readouterr().err


def test_the_sweep_summary_lists_failed_points_and_picks_the_status(tmp_path):
    """The end-of-sweep screen: done, skipped and failed points; a point that never reported counts as failed;
    the exit status is the failures' common status, else 1."""
    from autolora.cli import sweep

    labels = [f"sweep point {i} of 4 (seed={i})" for i in range(4)]
    sweep.record(tmp_path, "inv", 0, ["seed=0"], 0, "done")
    sweep.record(tmp_path, "inv", 1, ["seed=1"], 0, "skipped (finished before)")
    sweep.record(tmp_path, "inv", 2, ["seed=2"], 3, "stopped: non-finite loss")
    text, status = sweep.summary(tmp_path, "inv", labels[:3])
    assert status == 3 and "3 points, 1 done, 1 skipped (finished before), 1 failed:" in text
    assert "sweep point 2 of 4 (seed=2): exit 3: stopped: non-finite loss" in text
    text, status = sweep.summary(tmp_path, "inv", labels)
    assert status == 1 and "(seed=3): exit 1: did not report" in text
    assert sweep.summary(tmp_path, "inv", labels[:2]) == (
        f"sweep {tmp_path}: 2 points, 1 done, 1 skipped (finished before)", 0)


@pytest.mark.slow
def test_a_sweep_runs_every_point_lists_the_failed_ones_and_resumes(tmp_path):
    """Defect 7: a point that fails at run time (bad data) fails only its job; the sweep lists it at the end
    and exits 2. A sweep killed in its second point continues with `-m ... resume=true`: the finished point
    is skipped, the killed one resumed, the one never started run."""
    good, bad = glue_files(tmp_path / "good", many_rows(40)), glue_files(tmp_path / "bad", GOOD_ROWS + "9\tonly two\n")
    sweep = tmp_path / "sweep"
    first = launch("none", 0, ["-m", *TINY, "task=glue/rte", f"data.data_dir={good},{bad},{good}",
                               f"hydra.sweep.dir={sweep}"], tmp_path)
    assert first.returncode == 2, first.stderr[-2000:]
    assert sorted(job_number(p.parent) for p in sweep.glob("*/metrics.json")) == ["0", "2"]
    assert f"sweep {sweep}: 3 points, 2 done, 1 failed:" in first.stderr
    assert re.search(rf"sweep point 1 of 3 \(data.data_dir={bad}\): exit 2: error: .*train.tsv:10", first.stderr)
    killed = tmp_path / "killed"
    args = ["-m", *LONGER, "seed=0,1,2", f"hydra.sweep.dir={killed}"]
    assert launch("search", 12 + 7, args, tmp_path).returncode == -9  # 12 search steps per point
    assert (job(killed, 0) / "metrics.json").is_file() and (job(killed, 1) / "checkpoint.pt").is_file()
    resumed = launch("none", 0, [*args, "resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"sweep {killed}: 3 points, 2 done, 1 skipped (finished before)" in resumed.stderr
    assert sorted(job_number(p.parent) for p in killed.glob("*/metrics.json")) == ["0", "1", "2"]
    steps = [step for phase, step, *_ in events(job(killed, 1)) if phase == "search"]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_all_zero_ranks_after_the_search_keep_the_search_and_end_in_one_line(tmp_path, capsys):
    """Defect 10: a threshold that keeps no component ends right after the search with one line and exit 2
    (not after a retrain, not with a traceback); ranks.json keeps the search and its dev metrics."""
    run_dir = tmp_path / "run"
    sys.argv = ["autolora-run", *TINY, "search.threshold=1.0", f"hydra.run.dir={run_dir}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0 and "the search kept no component" in err
    saved = json.loads((run_dir / "ranks.json").read_text())
    assert set(saved["ranks"].values()) == {0} and "accuracy" in saved["search"]["dev"]
    assert not (run_dir / "metrics.json").exists() and not any(e[0] == "retrain" for e in events(run_dir))
