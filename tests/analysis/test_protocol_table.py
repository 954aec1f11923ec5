"""analysis.protocol_table: the glue_base table from run folders: means, the nearest-by-parameters pairing, the
Wilcoxon test on the paired differences, the chosen learning rates and the rank figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from scipy import stats

from autolora.analysis import protocol_table

NAMES = [f"encoder.layer.{i}.attention.attn.{m}" for i in range(2) for m in ("q", "v")]
PARAMS = {"lora_r2": 30_000, "lora_r4": 55_000, "lora_r8": 110_000, "autolora": 50_000}
# score = base[task] + offset[spec] + seed noise: autolora minus lora_r4 is +0.01 per pair except one pair
BASE = {"rte": 0.70, "mrpc": 0.85}
OFFSET = {"lora_r2": -0.02, "lora_r4": 0.0, "lora_r8": 0.005, "autolora": 0.01}


def score(task, spec, seed):
    bump = 0.03 if (task, spec, seed) == ("mrpc", "autolora", 2) else 0.0
    return BASE[task] + OFFSET[spec] + 0.001 * seed + bump


def _finished(root, task, spec, seed, ranks):
    folder = root / "final" / f"mpnet_glue_{task}" / spec / f"seed-{seed}"
    folder.mkdir(parents=True)
    metric = "accuracy"
    (folder / "metrics.json").write_text(json.dumps({
        "task": f"glue/{task}", "main_metric": metric,
        "retrain": {"dev": {metric: score(task, spec, seed)}, "trainable_params": PARAMS[spec], "gpu_seconds": 10.0},
        "ranks": ranks}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "retrain": {"lr": 3e-4}}))
    if spec == "autolora":
        # the budget readout ranks the matrices the same way in every seed; the gates readout is `ranks` (random)
        spectra = {n: [1.0 + i, 0.5] for i, n in enumerate(NAMES)} if task == "mrpc" else {}
        budget = {n: i % 3 for i, n in enumerate(NAMES)}
        (folder / "ranks.json").write_text(json.dumps({"ranks": ranks, "update_spectra": spectra, "readouts": {
            "gates": ranks, "budget": budget} if task == "mrpc" else {}}))


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    for task in BASE:
        for spec in PARAMS:
            for seed in range(3):
                uniform = {"lora_r2": 2, "lora_r4": 4, "lora_r8": 8}.get(spec)
                ranks = {n: uniform if uniform else int(rng.integers(0, 9)) for n in NAMES}
                _finished(tmp_path, task, spec, seed, ranks)
    (tmp_path / "selection.json").write_text(json.dumps({
        f"mpnet_glue_{t}/{s}": {"key": "retrain.lr", "scores": {"1e-4": 0.5, "3e-4": 0.6, "1e-3": None},
                                "chosen": "3e-4"} for t in BASE for s in PARAMS}))
    return tmp_path


def test_the_table_pairs_autolora_with_the_uniform_arm_nearest_in_parameters(root, tmp_path):
    runs = protocol_table.read_finals(root)
    assert protocol_table.nearest_uniform(runs, "rte", "autolora") == "lora_r4"  # 50k: nearer 55k than 30k
    result = protocol_table.paired(runs, ["rte", "mrpc"], "autolora")
    diffs = [score(t, "autolora", s) - score(t, "lora_r4", s) for t in ("rte", "mrpc") for s in range(3)]
    assert result["n"] == 6
    assert result["mean_diff"] == pytest.approx(np.mean(diffs))
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert result["per_task"]["rte"]["t_p"] is None  # three identical differences: no t-test, not a p of 0


def test_the_page_carries_provenance_means_choices_and_figures(root, tmp_path):
    out = tmp_path / "results"
    page = protocol_table.write(root, out, "glue_test", "NVIDIA H200", "make reproduce MATRIX=glue_base").read_text()
    for line in ("- command: `make reproduce MATRIX=glue_base`", "- device: NVIDIA H200", "- commit: ", "- date: "):
        assert line in page
    lora_r4 = next(line for line in page.splitlines() if line.startswith("| LoRA r=4 |"))
    # RTE: 70.0, 70.1, 70.2 -> 70.1 ± 0.1; MRPC 85.1 ± 0.1; average 77.6; 55,000 parameters; 3/3 seeds
    assert lora_r4.split("|")[2:7] == [" 70.1 ± 0.1 ", " 85.1 ± 0.1 ", " 77.6 ", " 55,000 ", " 3/3 "]
    assert "3e-4 (1e-4: 50.0, 3e-4: 60.0, 1e-3: –)" in page
    assert (out / "figures" / "glue_test_ranks_rte.png").stat().st_size > 0
    assert "figures/glue_test_ranks_mrpc.png" in page


def test_notes_go_under_the_provenance_and_survive_a_regeneration(root, tmp_path):
    out, notes = tmp_path / "results", "## Status\n\nOnly RTE ran: the device time ran out.\n"
    for _ in range(2):
        page = protocol_table.write(root, out, "glue_test", "NVIDIA H200", "cmd", notes).read_text()
    assert page.count("Only RTE ran") == 1
    assert page.index("- protocol: ") < page.index("## Status") < page.index("## Main metric")


def test_the_page_is_not_written_over_a_file_this_program_did_not_write(root, tmp_path):
    from autolora.analysis.report import ReportError

    out = tmp_path / "results"
    out.mkdir()
    (out / "glue_test.md").write_text("my own notes\n")
    with pytest.raises(ReportError, match="was not written by this program"):
        protocol_table.write(root, out, "glue_test", "NVIDIA H200", "cmd")
    assert (out / "glue_test.md").read_text() == "my own notes\n"


def test_every_readout_of_the_searches_is_compared_across_seeds(root, tmp_path):
    """MRPC's ranks.json files hold readouts: the budget readout and ‖ΔW‖_F, identical in every seed, agree
    (rho +1); RTE's older ranks.json files hold none and get no rows."""
    rows = protocol_table.readout_rows(protocol_table.read_finals(root), ["rte", "mrpc"])
    by_readout = {row[2]: row for row in rows}
    assert [row[0] for row in rows] == ["MRPC"] * 3 and set(by_readout) == {"gates", "budget", "‖ΔW‖_F"}
    assert by_readout["budget"][4] == "+1.00" and by_readout["‖ΔW‖_F"][4] == "+1.00"
    assert float(by_readout["budget"][5]) < 0.1 and by_readout["gates"][4] != "+1.00"
    page = protocol_table.write(root, tmp_path / "out", "glue_base", "cpu", "cmd").read_text()
    assert "## Every readout of the same searches, across seeds" in page


def test_readouts_that_agree_as_much_across_tasks_are_shown_as_such(root):
    """The fixture's budget readout is the same in every MRPC seed; give RTE's searches the same: agreement is
    +1 within a task and across tasks alike (the model's structure, not the task's)."""
    runs = protocol_table.read_finals(root)
    for seed in runs[("rte", "autolora")].values():
        seed["readouts"] = runs[("mrpc", "autolora")][0]["readouts"]
    rows = {row[1]: row for row in protocol_table.across_task_rows(runs, ["rte", "mrpc"])}
    assert rows["budget"][2:] == ["+1.00", "+1.00", "2"]
    assert protocol_table.across_task_rows(protocol_table.read_finals(root), ["rte", "mrpc"]) == []  # one task


def test_the_command_line_ends_bad_input_in_one_line_with_status_2(root, tmp_path, capsys):
    """A missing root, an unreadable report.json and a missing --notes file: one line naming it, exit 2."""
    out = tmp_path / "results"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{not json")
    for argv, message in [([str(tmp_path / "absent")], "absent: not a folder"),
                          ([str(tmp_path / "broken")], "report.json: not valid JSON"),
                          ([str(root), "--device", "cpu", "--command", "cmd", "--notes", str(tmp_path / "none.md")],
                           "none.md: file not found")]:
        with pytest.raises(SystemExit) as exit_info:
            protocol_table.main([*argv, "--name", "glue_test", "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


def test_a_broken_or_foreign_run_file_is_named_in_one_line(root, tmp_path, capsys):
    """A finals folder whose metrics.json is not JSON, holds a NaN, or is another program's, and a broken
    selection.json: exit 2 with the file named, nothing written."""
    out = tmp_path / "results"
    metrics = next(root.glob("final/*/*/seed-0/metrics.json"))
    good = metrics.read_text()
    for text, message in [("{not json", "metrics.json: not valid JSON"),
                          (good.replace("}", ', "loss": NaN}', 1), "metrics.json: not valid JSON .*NaN"),
                          ('{"chapter": 1}', "seed-0: not a finished run of the matrix")]:
        metrics.write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            protocol_table.main([str(root), "--device", "cpu", "--command", "cmd", "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    metrics.write_text(good)
    (root / "selection.json").write_text("[")
    with pytest.raises(SystemExit):
        protocol_table.main([str(root), "--device", "cpu", "--command", "cmd", "--out", str(out)])
    assert "selection.json: not valid JSON" in capsys.readouterr().err
    assert not out.exists()
