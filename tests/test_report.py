"""The report: synthetic run directories with known numbers in, the known table out."""

from __future__ import annotations

import json

import pytest
import yaml

from autolora import report


def _config(method: str, alpha_norm: str = "softmax", eta: float = 1e-4, adalora: dict | None = None) -> dict:
    return {"method": method, "lora": {"r": 8}, "adalora": adalora or {"target_r": 4},
            "search": {"alpha_norm": alpha_norm, "eta": eta, "ranks_file": None}}


def _run(folder, name, *, task="glue/rte", method="autolora", seed=0, accuracy=0.5, ranks=None, **config):
    path = folder / name
    path.mkdir(parents=True)
    ranks = ranks or {"m.layer.0.q": 2, "m.layer.0.v": 4}
    metrics = {"task": task, "model": "minilm", "method": method, "seed": seed, "main_metric": "accuracy",
               "retrain": {"dev": {"accuracy": accuracy}, "trainable_params": 1000 + seed, "wall_time_s": 10.0},
               "ranks": ranks, "versions": {"torch": "x"}, "device": "cpu"}
    if method == "autolora":
        metrics["search"] = {"wall_time_s": 4.0}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "config.yaml").write_text(yaml.safe_dump(_config(method, **config)))


def test_mean_std_table_from_known_runs(tmp_path):
    """Two AutoLoRA seeds (0.60, 0.70) and one LoRA seed (0.55) give '65.00 ± 7.07' and '55.00'."""
    runs_dir = tmp_path / "runs" / "demo"
    _run(runs_dir, "a0", seed=0, accuracy=0.60)
    _run(runs_dir, "a1", seed=1, accuracy=0.70, ranks={"m.layer.0.q": 4, "m.layer.0.v": 6})
    _run(runs_dir, "l0", method="lora", accuracy=0.55, ranks={"m.layer.0.q": 8, "m.layer.0.v": 8})
    _run(runs_dir, "e0", accuracy=0.40, eta=0.0)
    _run(runs_dir, "d0", method="adalora", accuracy=0.30)  # a config from before adalora.lr_scale: x1
    _run(runs_dir, "d1", method="adalora", accuracy=0.80, adalora={"target_r": 4, "lr_scale": 10.0})
    (runs_dir / "report.json").write_text(json.dumps({k: k.upper() for k in report.PROVENANCE_KEYS}))
    report.report_folder(runs_dir, tmp_path / "results")
    rows = {row["variant"]: row for row in report.table_rows(report.find_runs([runs_dir]))}
    assert rows["AutoLoRA"]["dev_accuracy"] == "65.00 ± 7.07" and rows["AutoLoRA"]["seeds"] == 2
    assert rows["AutoLoRA"]["mean_rank"] == "4.00" and rows["AutoLoRA"]["trainable_params"] == "1,000"
    assert rows["LoRA r=8"]["dev_accuracy"] == "55.00" and rows["LoRA r=8"]["search_s"] == "-"
    assert rows["AutoLoRA (eta=0)"]["dev_accuracy"] == "40.00"
    assert rows["AdaLoRA r=4 (lr x1)"]["dev_accuracy"] == "30.00"
    assert rows["AdaLoRA r=4 (lr x10)"]["dev_accuracy"] == "80.00"
    page = (tmp_path / "results" / "demo.md").read_text()
    assert page.startswith("# TITLE") and "- commit: COMMIT" in page and "| glue/rte | minilm | AutoLoRA | 2 |" in page
    assert (tmp_path / "results" / "demo.csv").read_text().splitlines()[0].startswith("task,model,variant")
    assert (tmp_path / "results" / "figures" / "demo_ranks.png").stat().st_size > 1000


def test_missing_provenance_is_refused(tmp_path):
    """A runs folder without complete provenance produces no table."""
    _run(tmp_path, "a0")
    (tmp_path / "report.json").write_text(json.dumps({"title": "t"}))
    with pytest.raises(ValueError, match="missing"):
        report.report_folder(tmp_path, tmp_path / "results")


def test_grid_cost_and_figures(tmp_path):
    """With a uniform-rank grid present, AutoLoRA's row gets its cost over the grid's total, and the
    score-vs-parameters and cost figures are drawn."""
    runs_dir = tmp_path / "runs" / "grid"
    _run(runs_dir, "a0", accuracy=0.6)  # AutoLoRA: search 4 s + retrain 10 s = 14 s
    for r in (2, 8):
        path = runs_dir / f"lora{r}"
        _run(runs_dir, f"lora{r}", method="lora", accuracy=0.5)  # 10 s each: grid total 20 s
        config = yaml.safe_load((path / "config.yaml").read_text())
        config["lora"]["r"] = r
        (path / "config.yaml").write_text(yaml.safe_dump(config))
    (runs_dir / "report.json").write_text(json.dumps({k: k for k in report.PROVENANCE_KEYS}))
    report.report_folder(runs_dir, tmp_path / "results")
    page = (tmp_path / "results" / "grid.md").read_text()
    assert "| 14.0 | 0.70 (grid of 2) |" in page
    for kind in ("ranks", "score_params", "cost"):
        assert (tmp_path / "results" / "figures" / f"grid_{kind}.png").stat().st_size > 1000


def test_reproduce_plans_one_multirun_per_experiment_and_spec(tmp_path):
    """The smoke matrix: 2 experiments x 3 methods + 2 x 3 ablations = 12 multiruns; GLUE data under DATA/glue."""
    from autolora import reproduce

    matrix = reproduce.load_matrix("smoke")
    planned = reproduce.jobs(matrix, None, tmp_path)
    assert len(planned) == 12 and all(args[0] == "-m" for _, _, args in planned)
    assert {spec for _, spec, _ in planned} == {"autolora", "lora_grid", "adalora", "first_order", "sigmoid", "no_sum"}
    minilm = reproduce.jobs(reproduce.load_matrix("minilm"), "/data", tmp_path)
    data = {experiment: next(a for a in args if a.startswith("data.data_dir=")) for experiment, _, args in minilm}
    assert data["minilm_glue_rte"] == "data.data_dir=/data/glue" and data["minilm_ner_conll2003"] == "data.data_dir=/data"
    assert not any(a.startswith("hydra/launcher=") for _, _, args in planned for a in args)
    parallel = reproduce.jobs(matrix, None, tmp_path, launcher="local")
    assert all(args[-1] == "hydra/launcher=local" for _, _, args in parallel)


def test_every_matrix_names_existing_experiments():
    """Each experiment a matrix lists is a file in conf/experiment/."""
    from autolora import reproduce
    from autolora.settings import config_dir

    for path in (config_dir() / "matrix").glob("*.yaml"):
        matrix = reproduce.load_matrix(path.stem)
        for key in ("experiments", "grid_experiments", "ablation_experiments"):
            for experiment in matrix.get(key, []):
                assert (config_dir() / "experiment" / f"{experiment}.yaml").is_file(), (path.name, experiment)
