"""The selection protocol (cli/protocol.py): tune on held-out train, choose, then the seeds; resumable."""

from __future__ import annotations

import json

import pytest
import yaml

from autolora.cli import protocol

MATRIX = {
    "experiments": ["smoke_sst2_tiny"],
    "methods": {"lora_r2": ["method=lora", "lora.r=2"], "autolora": ["method=autolora"]},
    "select": {"key": "retrain.lr", "values": ["1e-4", "3e-2"], "seed": 0,
               "overrides": ["data.select_on=heldout", "data.heldout_fraction=0.25"]},
    "seeds": [0, 1],
    "overrides": ["logger=none", "progress=false", "device=cpu", "data.max_train_samples=32",
                  "data.max_eval_samples=16", "search.epochs=1", "retrain.epochs=1",
                  "search.batch_size=4", "search.warmup_ratio=0.0"],  # several search steps: the gates move
}


def test_waves_plan_selection_off_the_reported_set_and_autolora_searches_once(tmp_path):
    first, second = protocol.selection_waves(MATRIX, tmp_path, MATRIX["overrides"])
    assert len(first) == 3 and len(second) == 1  # lora at both values, autolora's search at the first
    assert all("data.select_on=heldout" in run.args for run in first + second)
    (late,) = second
    assert late.args[-1] == f"search.ranks_file={tmp_path}/select/smoke_sst2_tiny/autolora/retrain.lr-1e-4/ranks.json"


def test_choice_is_the_best_held_out_score_and_ties_go_to_the_grid_order(tmp_path):
    def finished(spec, value, score, select_on="heldout"):
        folder = tmp_path / "select" / "smoke_sst2_tiny" / spec / f"retrain.lr-{value}"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"select_on": select_on}}))
        (folder / "metrics.json").write_text(json.dumps({"main_metric": "accuracy",
                                                         "retrain": {"dev": {"accuracy": score}}}))

    finished("lora_r2", "1e-4", 0.6)
    finished("lora_r2", "3e-2", 0.7)
    finished("autolora", "1e-4", 0.5)
    finished("autolora", "3e-2", 0.5)
    chosen = protocol.choose(MATRIX, tmp_path)
    assert chosen["smoke_sst2_tiny/lora_r2"]["chosen"] == "3e-2"
    assert chosen["smoke_sst2_tiny/autolora"]["chosen"] == "1e-4"
    finals = protocol.final_runs(MATRIX, tmp_path, [], chosen)
    assert [run.folder.name for run in finals] == ["seed-0", "seed-0", "seed-1", "seed-1"]  # seed-major
    assert "retrain.lr=3e-2" in finals[0].args and "seed=0" in finals[0].args


def test_a_grid_with_an_unfinished_value_chooses_nothing_and_has_no_finals(tmp_path):
    """Its best finished value need not be the grid's best: no choice, no finals, until every value finished."""
    folder = tmp_path / "select" / "smoke_sst2_tiny" / "lora_r2" / "retrain.lr-1e-4"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"select_on": "heldout"}}))
    (folder / "metrics.json").write_text(json.dumps({"main_metric": "accuracy", "retrain": {"dev": {"accuracy": 0.9}}}))
    (folder.parent / "retrain.lr-3e-2").mkdir()  # started, cut off: no metrics.json
    chosen = protocol.choose(MATRIX, tmp_path)
    assert chosen["smoke_sst2_tiny/lora_r2"] == {"key": "retrain.lr", "scores": {"1e-4": 0.9, "3e-2": None},
                                                "chosen": None}
    assert protocol.final_runs(MATRIX, tmp_path, [], chosen) == []


def test_a_reported_set_run_is_never_taken_for_a_selection_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"select_on": "dev"}}))
    (folder / "metrics.json").write_text(json.dumps({"main_metric": "accuracy", "retrain": {"dev": {"accuracy": 1}}}))
    with pytest.raises(ValueError, match="not a selection run"):
        protocol.held_out_score(folder)


@pytest.mark.slow
def test_a_tiny_matrix_runs_end_to_end_and_a_second_call_runs_nothing(tmp_path):
    failed = protocol.run_matrix(MATRIX, tmp_path, MATRIX["overrides"], jobs=2)
    assert failed == []
    chosen = json.loads((tmp_path / protocol.SELECTION).read_text())
    assert all(pick["chosen"] in ("1e-4", "3e-2") for pick in chosen.values())
    finals = sorted(tmp_path.glob("final/*/*/seed-*/metrics.json"))
    assert len(finals) == 4
    for path in finals:
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
        assert config["data"]["select_on"] == "dev"  # the finals report dev
        pick = chosen[f"smoke_sst2_tiny/{path.parent.parent.name}"]["chosen"]
        assert float(config["retrain"]["lr"]) == float(pick)
    selection = sorted(tmp_path.glob("select/*/*/*/metrics.json"))
    assert len(selection) == 4
    assert all(yaml.safe_load((p.parent / "config.yaml").read_text())["data"]["select_on"] == "heldout"
               for p in selection)
    before = {p: p.stat().st_mtime_ns for p in finals + selection}
    assert protocol.run_matrix(MATRIX, tmp_path, MATRIX["overrides"], jobs=2) == []
    assert {p: p.stat().st_mtime_ns for p in finals + selection} == before


def test_a_freed_slot_goes_to_the_earliest_waiting_run_not_the_first_to_ask():
    """Runs ask in shuffled order while the one slot is taken; they then run in matrix (priority) order."""
    import threading
    import time

    slots, order = protocol.Slots(1), []
    priorities = [(1, 0, 0, 0), (0, 2, 1, 0), (0, 0, 1, 3), (0, 0, 1, 1), (2, 1, 0, 0)]

    def wait_and_record(priority):
        with slots.take(priority):
            order.append(priority)

    with slots.take((-1,)):
        threads = [threading.Thread(target=wait_and_record, args=(p,)) for p in priorities]
        for thread in threads:
            thread.start()
        while len(slots.waiting) < len(priorities):  # all of them queued behind the held slot
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=10)
    assert order == sorted(priorities)
