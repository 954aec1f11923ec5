"""The report: synthetic run directories with known numbers in, the known tables out; bad input, one line."""

from __future__ import annotations

import csv
import json
import os

import pytest
import yaml
from conftest import REPO

from autolora.analysis import report

RANKS = {"m.layer.0.q": 2, "m.layer.0.v": 4, "m.layer.1.q": 6, "m.layer.1.v": 3}


def _gates(ranks: dict[str, int], k: int = 8) -> dict[str, list[float]]:
    """Gates whose count >= 1/k is the rank: `rank` gates at 1.5/k, the others at 0.5/k."""
    return {name: [1.5 / k] * rank + [0.5 / k] * (k - rank) for name, rank in ranks.items()}


def _run(folder, name, *, task="glue/rte", method="autolora", seed=0, accuracy=0.5, ranks=None, n_train=100,
         eval_split=None, gates=True, **config):
    """A finished run directory: metrics.json, config.yaml and (AutoLoRA) ranks.json with gates."""
    path = folder / name
    path.mkdir(parents=True)
    ranks = dict(ranks or RANKS)
    retrain = {"dev": {"accuracy": accuracy}, "trainable_params": 1000 + seed, "wall_time_s": 10.0, "steps": 50}
    if eval_split:
        retrain["eval_split"] = eval_split
    metrics = {"task": task, "model": "minilm", "method": method, "seed": seed, "main_metric": "accuracy",
               "n_train": n_train, "n_dev": 20, "retrain": retrain, "ranks": ranks, "versions": {"torch": "x"},
               "device": "cpu", "git_commit": "abc1234", "command": "run.py -m seed=0,1",
               "started_at": "2026-12-01T10:00:00+00:00"}
    if method == "autolora":
        metrics["search"] = {"wall_time_s": 4.0, "steps": 20, "threshold": 0.125}
        if gates:
            (path / "ranks.json").write_text(json.dumps({"ranks": ranks, "alpha": _gates(ranks), "threshold": 0.125}))
    settings = {"method": method, "seed": seed, "log_every": 20, "data": {"data_dir": f"/data/{name}"},
                "lora": {"r": 8}, "adalora": {"target_r": 4},
                "search": {"alpha_norm": "softmax", "eta": 1e-4, "ranks_file": None, "epochs": 3}}
    for key, value in config.items():  # search__epochs=20 -> search.epochs
        section, _, leaf = key.partition("__")
        settings[section] = {**settings[section], leaf: value} if leaf else value
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.yaml").write_text(yaml.safe_dump(settings))
    return path


def _read_csv(path) -> dict[str, dict[str, str]]:
    return {row["method"]: row for row in csv.DictReader(path.open())}


def test_tables_from_a_folder_without_report_json(tmp_path):
    """Two AutoLoRA seeds (0.60, 0.70), LoRA, eta=0 and two AdaLoRA variants: the task x method pivot holds
    '65.00 ± 7.07', the CSV numeric mean and std, the LaTeX a booktabs table; provenance comes from the runs and
    the output lands in FOLDER/report."""
    runs = tmp_path / "sweep"
    _run(runs, "a0", seed=0, accuracy=0.60)
    _run(runs, "a1", seed=1, accuracy=0.70, ranks={**RANKS, "m.layer.0.q": 4})
    _run(runs, "l0", method="lora", accuracy=0.55, ranks={n: 8 for n in RANKS})
    _run(runs, "e0", accuracy=0.40, search__eta=0.0)
    _run(runs, "d0", method="adalora", accuracy=0.30)  # a config from before adalora.lr_scale: x1
    _run(runs, "d1", method="adalora", accuracy=0.80, adalora__lr_scale=10.0)
    written, warnings = report.report_folder(runs)
    assert warnings == [] and all(path.is_relative_to(runs / "report") for path in written)
    page = (runs / "report" / "sweep.md").read_text()
    assert "| task | AutoLoRA | AutoLoRA (eta=0) | LoRA r=8 | AdaLoRA r=4 (lr x1) | AdaLoRA r=4 (lr x10) |" in page
    assert "| glue/rte (accuracy) | 65.00 ± 7.07 | 40.00 | 55.00 | 30.00 | 80.00 |" in page
    assert "- commit: abc1234" in page and "- date: 2026-12-01" in page and "`run.py -m seed=0,1`" in page
    rows = _read_csv(runs / "report" / "sweep.csv")
    assert float(rows["AutoLoRA"]["accuracy_mean"]) == pytest.approx(65.0)
    assert float(rows["AutoLoRA"]["accuracy_std"]) == pytest.approx(7.0710678)
    assert rows["LoRA r=8"]["accuracy_std"] == "" and float(rows["AutoLoRA"]["mean_rank"]) == pytest.approx(4.0)
    latex = (runs / "report" / "sweep.tex").read_text()
    assert r"\toprule" in latex and r"65.00 $\pm$ 7.07" in latex and r"AdaLoRA r=4 (lr x10) \\" in latex
    assert (runs / "report" / "figures" / "sweep_ranks.png").stat().st_size > 1000


def test_grouping_by_config_up_to_seed_and_run_only_keys(tmp_path):
    """Runs that differ in data_dir, log_every and (for AutoLoRA) the unread lora.r form one group; a searched
    key (search.epochs) splits the group and labels both, also beside a LoRA run (which has no search.* keys:
    keys common to all runs once merged the two budgets); a repeated seed and a different training-set size within
    one group are warned about."""
    runs = tmp_path / "runs"
    _run(runs, "a0", seed=0, log_every=5)
    _run(runs, "a1", seed=1, lora__r=4)
    _run(runs, "a1-again", seed=1, n_train=90)
    _run(runs, "long0", seed=0, search__epochs=20)
    _run(runs, "lora0", seed=0, method="lora")
    groups, warnings = report.group_runs(report.find_runs(runs)[0])
    assert [(g.method, len(g.runs)) for g in groups] == [
        ("AutoLoRA [search.epochs=3]", 3), ("AutoLoRA [search.epochs=20]", 1), ("LoRA r=8", 1)]
    assert any("seed 1 appears 2 times" in w for w in warnings)
    assert any("mixed n_train [90, 100]" in w for w in warnings)


def test_across_seeds_the_report_measures_rank_agreement(tmp_path):
    """Three seeds with identical ranks agree beyond chance (pairs 1.00, rho +1.00); three seeds with shuffled
    ranks do not; the ranks figure shows every seed and NAME_seeds.csv one line per (matrix, seed)."""
    runs = tmp_path / "seeds"
    names = [f"m.layer.{layer}.{kind}" for layer in range(4) for kind in "qv"]
    stable = dict(zip(names, [1, 2, 3, 4, 5, 6, 7, 8], strict=True))
    for seed in range(3):
        _run(runs, f"s{seed}", task="glue/mrpc", seed=seed, ranks=stable)
    for seed, order in enumerate([[1, 2, 3, 4, 5, 6, 7, 8], [8, 1, 6, 3, 2, 7, 4, 5], [4, 7, 2, 8, 6, 1, 5, 3]]):
        _run(runs, f"r{seed}", task="glue/rte", seed=seed, ranks=dict(zip(names, order, strict=True)))
    report.report_folder(runs, tmp_path / "out")
    rows = _read_csv_by_task(tmp_path / "out" / "seeds.csv")
    assert float(rows["glue/mrpc"]["pair_agreement"]) == 1.0 and float(rows["glue/mrpc"]["rank_spearman"]) == 1.0
    assert float(rows["glue/mrpc"]["rank_spearman_p"]) < 0.01 and float(rows["glue/rte"]["rank_spearman_p"]) > 0.05
    page = (tmp_path / "out" / "seeds.md").read_text()
    assert "In 1 of 2 groups the per-matrix ranks repeat across seeds beyond chance" in page
    assert "| q · layer 0 | 1 1 1 | 1.00 | 1.00 |" in page and "| q · layer 0 | 1 8 4 | 0.00 | 0.33 |" in page
    assert len((tmp_path / "out" / "seeds_seeds.csv").read_text().splitlines()) == 1 + 6 * 8
    assert (tmp_path / "out" / "figures" / "seeds_ranks.png").stat().st_size > 1000


def _read_csv_by_task(path) -> dict[str, dict[str, str]]:
    return {row["task"]: row for row in csv.DictReader(path.open())}


def test_report_json_adds_title_and_replaces_provenance_lines(tmp_path):
    """report.json's title, notes and commit appear; lines it does not give still come from the runs; rescored
    metrics replace the run's own; a run scored on test says so in the headings."""
    runs = tmp_path / "runs" / "demo"
    path = _run(runs, "a0", eval_split="test")
    (path / "metrics_rescored.json").write_text(json.dumps({"dev": {"accuracy": 0.9, "per_type": {"x": 1}}}))
    (runs / "report.json").write_text(json.dumps({"title": "TITLE", "commit": "COMMIT", "notes": "NOTES"}))
    report.report_folder(runs, tmp_path / "results")
    page = (tmp_path / "results" / "demo.md").read_text()
    assert page.startswith("# TITLE") and "- commit: COMMIT" in page and "\nNOTES\n" in page
    assert "- device: cpu" in page and "## accuracy (test)" in page and "| glue/rte | 90.00 |" in page


def test_bad_runs_are_skipped_and_bad_folders_give_one_line(tmp_path, capsys):
    """A garbage metrics.json beside good runs is skipped with a one-line warning; an empty, a missing and a
    garbage-only folder each give one 'error:' line and status 2 without stopping the good folder; two folders
    of one name into one --out are refused rather than overwritten."""
    good, empty, garbage = tmp_path / "good", tmp_path / "empty", tmp_path / "garbage"
    _run(good, "a0")
    broken = _run(good, "broken")
    (broken / "metrics.json").write_text("{not json")
    _run(good, "partial", method="lora")
    (good / "partial" / "config.yaml").write_text("method: lora\n")  # lora.r missing
    empty.mkdir()
    (garbage / "x").mkdir(parents=True)
    (garbage / "x" / "metrics.json").write_text("[1, 2]")
    (garbage / "x" / "config.yaml").write_text("method: autolora")
    status = report.main([str(empty), str(tmp_path / "missing"), str(garbage), str(good)])
    out, err = capsys.readouterr()
    assert status == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "no such folder" in errors[1] and "expected a mapping" in errors[2]
    skipped = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 2 and "cannot be read" in skipped[0] and "lacks the key 'lora'" in skipped[1]
    assert str(good / "report" / "good.md") in out
    (tmp_path / "other" / "good").mkdir(parents=True)
    assert report.main([str(good), str(tmp_path / "other" / "good"), "--out", str(tmp_path / "tables")]) == 2
    assert "would overwrite that of" in capsys.readouterr().err


def test_grid_cost_and_figures(tmp_path):
    """With a uniform-rank grid present, AutoLoRA's row gets its cost over the grid's total, and the
    score-vs-parameters and cost figures are drawn."""
    runs = tmp_path / "grid"
    _run(runs, "a0", accuracy=0.6)  # AutoLoRA: search 4 s + retrain 10 s = 14 s
    for r in (2, 8):
        _run(runs, f"lora{r}", method="lora", accuracy=0.5, lora__r=r)  # 10 s each: grid total 20 s
    report.report_folder(runs, tmp_path / "results")
    page = (tmp_path / "results" / "grid.md").read_text()
    assert "| 14.0 | 0.70 (grid of 2) |" in page
    for kind in ("ranks", "score_params", "cost"):
        assert (tmp_path / "results" / "figures" / f"grid_{kind}.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_real_two_seed_sweep_gives_a_task_by_method_table(tmp_path):
    """`autolora-run -m method=autolora,lora seed=0,1 debug=tiny`, then `python -m autolora.analysis.report` on
    the sweep
    folder: one pivot row with mean ± std over 2 seeds for each method, the noise warning of the 2-step
    searches, and the tables beside the runs in sweep/report/."""
    import os
    import subprocess
    import sys


    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "autolora", "-m", "debug=tiny", "method=autolora,lora",
                           "seed=0,1", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    tabled = subprocess.run([sys.executable, "-m", "autolora.analysis.report", str(sweep)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert tabled.returncode == 0, tabled.stderr[-2000:]
    assert "rounding noise" in tabled.stderr and "Traceback" not in tabled.stderr
    page = (sweep / "report" / "sweep.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| glue/sst2 · tiny-roberta (accuracy) |")
               or line.startswith("| glue/sst2 (accuracy) |"))
    assert row.count(" ± ") == 2, row
    assert {r["seeds"] for r in csv.DictReader((sweep / "report" / "sweep.csv").open())} == {"2"}


def test_reproduce_plans_one_multirun_per_experiment_and_spec(tmp_path):
    """The smoke matrix: 2 experiments x 3 methods + 2 x 3 ablations = 12 multiruns; data.data_dir=DATA for all."""
    from autolora.cli import reproduce

    matrix = reproduce.load_matrix("smoke")
    planned = reproduce.jobs(matrix, None, tmp_path)
    assert len(planned) == 12 and all(args[0] == "-m" for _, _, args in planned)
    assert {spec for _, spec, _ in planned} == {"autolora", "lora_grid", "adalora", "first_order", "sigmoid", "no_sum"}
    minilm = reproduce.jobs(reproduce.load_matrix("minilm"), "/data", tmp_path)
    data = {experiment: next(a for a in args if a.startswith("data.data_dir=")) for experiment, _, args in minilm}
    assert data["minilm_glue_rte"] == "data.data_dir=/data" and data["minilm_ner_conll2003"] == "data.data_dir=/data"
    assert not any(a.startswith("hydra/launcher=") for _, _, args in planned for a in args)
    parallel = reproduce.jobs(matrix, None, tmp_path, launcher="local")
    assert all(args[-1] == "hydra/launcher=local" for _, _, args in parallel)
    shared = reproduce.jobs(matrix, None, tmp_path, launcher="parallel", at_once=6)  # --launcher parallel --jobs 6
    assert all(args[-2:] == ["hydra/launcher=parallel", "hydra.launcher.jobs=6"] for _, _, args in shared)


def test_every_matrix_names_existing_experiments():
    """Each experiment a matrix lists is a file in conf/experiment/."""
    from autolora.cli import reproduce
    from autolora.layout import config_dir

    for path in (config_dir() / "matrix").glob("*.yaml"):
        matrix = reproduce.load_matrix(path.stem)
        for key in ("experiments", "grid_experiments", "ablation_experiments"):
            for experiment in matrix.get(key, []):
                assert (config_dir() / "experiment" / f"{experiment}.yaml").is_file(), (path.name, experiment)


def test_the_report_overwrites_only_files_it_wrote(tmp_path, capsys):
    """A second report over its own output replaces it (listed in report/.autolora-report); a NAME.md the report
    did not write, a link in its place, and FOLDER/report being a file each end in one 'error:' line, exit 2,
    with every file as it was."""
    runs = tmp_path / "sweep"
    _run(runs, "a0")
    written, _ = report.report_folder(runs)
    assert report.report_folder(runs)[0] == written  # its own files: replaced
    listed = (runs / "report" / ".autolora-report").read_text().splitlines()
    assert {"sweep.md", "sweep.csv", "figures/sweep_ranks.png"} <= set(listed)
    mine = tmp_path / "mine"
    _run(mine, "a0")
    (mine / "report").mkdir()
    (mine / "report" / "mine.md").write_text("my notes\n")
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("keep me\n")
    linked = tmp_path / "linked"
    _run(linked, "a0")
    (linked / "report").mkdir()
    (linked / "report" / "linked.csv").symlink_to(elsewhere)
    blocked = tmp_path / "blocked"
    _run(blocked, "a0")
    (blocked / "report").write_text("a file where the folder goes\n")
    capsys.readouterr()
    assert report.main([str(mine), str(linked), str(blocked)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors), errors
    assert "mine/report/mine.md exists and was not written by this program" in errors[0]
    assert "linked/report/linked.csv exists and was not written by this program" in errors[1]
    assert "blocked/report is a file, not a folder" in errors[2]
    assert (mine / "report" / "mine.md").read_text() == "my notes\n" and sorted(os.listdir(mine / "report")) == [
        "mine.md"]
    assert elsewhere.read_text() == "keep me\n" and (blocked / "report").read_text().startswith("a file")


def test_make_report_owns_the_committed_report_outputs():
    """results/.autolora-report lists every file `make report` writes into results/ that is committed, so the
    committed tables can be regenerated in place; it lists nothing else."""
    results = REPO / "results"
    listed = (results / ".autolora-report").read_text().splitlines()
    names = [path.name for path in (results / "runs").iterdir() if path.is_dir()]
    expected = sorted(str(path.relative_to(results)) for name in names for path in
                      [*results.glob(f"{name}.*"), *results.glob(f"{name}_seeds.csv"),
                       *results.glob(f"figures/{name}_*.png")])
    assert listed == expected


def test_runs_on_different_data_are_not_seeds_of_one_group(tmp_path):
    """Two seeds whose configs differ only in data.data_dir (a path key) but whose data files differ (the sha256
    in their markers) form two groups, not one mean ± std; the same files in two folders form one group. A run
    without started_at takes its date from the marker (it used to be skipped: 'could not convert string')."""
    runs = tmp_path / "sweep"
    for name, seed, sha in (("a0", 0, "1" * 64), ("a1", 1, "1" * 64), ("b0", 0, "2" * 64), ("b1", 1, "2" * 64)):
        path = _run(runs, name, seed=seed, accuracy=0.5 + 0.1 * seed)
        (path / ".autolora-run").write_text(json.dumps({"created": "2026-11-30T09:00:00",
                                                        "data": {f"/data/{name}/train.tsv": sha}}))
    metrics = json.loads((runs / "a0" / "metrics.json").read_text())
    del metrics["started_at"]
    (runs / "a0" / "metrics.json").write_text(json.dumps(metrics))
    groups, _ = report.group_runs(report.find_runs(runs)[0])
    assert sorted(len(group.runs) for group in groups) == [2, 2]
    assert {frozenset(run.path.name for run in group.runs) for group in groups} == {frozenset({"a0", "a1"}),
                                                                                     frozenset({"b0", "b1"})}
    assert report.find_runs(runs)[1] == [] and "2026-11-30" in report.provenance(
        report.find_runs(runs)[0], {}, runs, "x")["date"]


def test_a_metrics_json_holding_nan_is_skipped_by_name_not_averaged(tmp_path, capsys):
    """write_json never writes NaN (strict JSON): a metrics.json with one was edited by someone else. It is
    read strictly (files.strict_json): the run is skipped with its file and line, and a folder of nothing
    else is one 'error:' line and status 2; before, 'nan' was averaged into the table with exit 0."""
    run = _run(tmp_path / "runs", "a0")
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["retrain"]["dev"]["accuracy"] = float("nan")
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    assert report.main([str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert "a0/metrics.json: cannot be read (line 11: NaN is not a number strict JSON allows)" in lines[0], lines[0]
    assert not (tmp_path / "runs" / "report").exists()


def test_a_metrics_json_saved_as_utf16_is_named_with_the_fix(tmp_path, capsys):
    """A run file re-saved by an editor as UTF-16 is read as every user file is (files.read_text): one line that
    names it and says how to convert it, not a codec traceback's words."""
    run = _run(tmp_path / "runs", "a0")
    (run / "metrics.json").write_text((run / "metrics.json").read_text(), encoding="utf-16")
    assert report.main([str(tmp_path / "runs")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a0/metrics.json: UTF-16 or binary, not UTF-8 text; convert it" in lines[0], lines


def test_reproduce_never_deletes_a_runs_folder_it_did_not_write(tmp_path, monkeypatch, capsys):
    """results/runs/NAME is replaced by each reproduction, but only when it is reproduce's own (its report.json):
    a folder of the user's there ends in one line, exit 2, every file kept."""
    from autolora.cli import reproduce

    monkeypatch.setattr(reproduce, "run_multiruns", lambda planned, dry_run: [])
    mine = tmp_path / "results" / "runs" / "smoke" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes\n")
    (tmp_path / "root").mkdir()  # the matrix's earlier root, continued
    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--matrix", "smoke", "--results", str(tmp_path / "results"),
                        "--continue", str(tmp_path / "root")])
    assert stop.value.code == 2 and "was not written by reproduce" in capsys.readouterr().err
    assert mine.read_text() == "my notes\n"


def test_an_unknown_matrix_is_one_line_naming_the_known_ones(capsys):
    from autolora.cli import reproduce

    with pytest.raises(SystemExit) as stop:
        reproduce.main(["--matrix", "glue_bsae", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("reproduce: error: no matrix 'glue_bsae'; choose one of ") and "glue_base" in err


def test_meaningless_numbers_and_a_mistyped_continue_are_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    from autolora.cli import reproduce

    monkeypatch.setattr(reproduce, "run_multiruns", lambda planned, dry_run: pytest.fail("a multirun started"))
    for extra, message in [(["--jobs", "0"], "--jobs must be at least 1"),
                           (["--deadline-min", "-5"], "--deadline-min must be positive"),
                           (["--continue", str(tmp_path / "typo")], "typo: no such folder")]:
        with pytest.raises(SystemExit) as stop:
            reproduce.main(["--matrix", "smoke", *extra])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith("reproduce: error: ") and message in err, err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "typo").exists()
