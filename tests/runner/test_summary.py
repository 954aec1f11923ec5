"""The one-screen summary: the gate block (diagnostics, noise warning), scores under their split's name,
where the ranks came from, where the W&B run is."""

from __future__ import annotations

from pathlib import Path

from autolora.method.ranks import search_diagnostics
from autolora.runner.summary import evaluated_splits, flat_summary, gate_lines, summary_text


def test_gate_block_shows_spread_and_the_noise_test_s_verdict():
    """A search whose noise test did not find the ranks supported gives the spread line plus a warning line
    with the advice; a supported one a `noise` line with its p-value and no warning; a search record from
    before the diagnostics gives no block at all."""
    from autolora.method import noise_test

    untested = gate_lines(search_diagnostics({"m": [0.125 + 1e-7, 0.125 - 1e-7] + [0.125] * 6}, 0.125,
                                             noise_test.untested(2)))
    assert len(untested) == 2 and "over 1 matrices: min 2e-07 / median 2e-07 / max 2e-07" in untested[0]
    assert untested[1].startswith("warning  noise test not run") and "search.alpha_lr" in untested[1]
    supported = {"verdict": noise_test.SUPPORTED, "correlation": 0.31, "p": 0.002, "matrices": 1, "level": 0.05}
    separated = gate_lines(search_diagnostics({"m": [0.3, 0.3] + [0.4 / 6] * 6}, 0.125, supported))
    assert len(separated) == 2 and "max 0.23" in separated[0]
    assert separated[1] == ("noise    ranks supported: split-half alpha increments correlate r = +0.310 over 1 "
                            "matrices, permutation p = 0.002 (level 0.05); within this search only: compare seeds "
                            "with autolora-agree")
    assert gate_lines({"steps": 2, "threshold": 0.125}) == []


RANKS = {"roberta.encoder.layer.0.attention.self.query": 3, "roberta.encoder.layer.0.attention.self.value": 0}


def record(**extra) -> dict:
    """A finished run's metrics.json as the pipeline writes it (NER-like: scored on test)."""
    phase = {"eval_split": "test", "test": {"f1": 0.5}, "steps": 4, "wall_time_s": 1.0, "trainable_params": 10}
    return {"task": "ner/x", "model": "m", "method": "autolora", "seed": 0, "device": "cpu", "precision": "fp32",
            "main_metric": "f1", "data": "files", "n_train": 8, "n_test": 4, "ranks": RANKS,
            "search": {**phase, "threshold": 0.125}, "retrain": phase, **extra}


def test_test_split_scores_are_labelled_test():
    """A run scored on its test file says 'test' in the summary, the flat W&B keys and nowhere 'dev'."""
    text = summary_text(record(ranks_from="search"), Path("/runs/r"))
    assert "4 test" in text and "test f1 0.5000" in text and " dev" not in text
    assert flat_summary(record())["retrain/test_f1"] == 0.5


def test_old_records_without_eval_split_read_as_dev():
    """metrics.json written before eval_split existed held one split under 'dev'."""
    assert evaluated_splits({"dev": {"accuracy": 0.9}}) == {"dev": {"accuracy": 0.9}}
    assert list(evaluated_splits({"eval_split": "test", "test": {}, "dev": {}})) == ["dev", "test"]


def test_summary_says_where_ranks_and_the_wandb_run_are():
    """The ranks' origin (this run's search or search.ranks_file) and the offline W&B folder with its sync command."""
    searched = summary_text(record(ranks_from="search"), Path("/runs/r"))
    reused = summary_text(record(ranks_from="ranks_file", ranks_file="/old/ranks.json",
                                 wandb={"mode": "offline", "dir": "/runs/r/wandb/offline-run-1",
                                        "sync": "wandb sync /runs/r/wandb/offline-run-1"}), Path("/runs/r"))
    assert "ranks    from this run's search (ranks.json)" in searched and "W&B" not in searched
    assert "ranks    from search.ranks_file=/old/ranks.json (no search in this run)" in reused
    budget = summary_text(record(ranks_from="ranks_file", ranks_file="/old/ranks.json", ranks_readout="budget"),
                          Path("/runs/r"))
    assert "ranks    from search.ranks_file=/old/ranks.json (its budget readout, no search in this run)" in budget
    assert ("W&B      offline run /runs/r/wandb/offline-run-1; upload it with: wandb sync /runs/r/wandb/offline-run-1"
            in reused)


def test_summary_names_the_targets_and_who_chose_them():
    """The targets line: the matrices' last names, how many, and whether the architecture (per head for a
    per-head fused projection) or model.targets chose them; a record from before targets has none."""
    from autolora.models.targets import TargetConfig, describe

    found = describe(TargetConfig(("query_key_value",), ("q", "k", "v"), ("q", "v"), groups=4, found=True))
    text = summary_text(record(ranks_from="search", targets=found), Path("/runs/r"))
    assert (f"targets  query_key_value:q, query_key_value:v: {len(RANKS)} matrices (found in the architecture: the "
            "query and value projections of its attention blocks; the slices of each of its 4 heads)") in text
    configured = describe(TargetConfig(("bert.encoder.layer.0.attention.self.query",), (), ()))
    text = summary_text(record(ranks_from="search", targets=configured), Path("/runs/r"))
    assert f"targets  query: {len(RANKS)} matrices (model.targets)" in text
    assert "targets" not in summary_text(record(ranks_from="search"), Path("/runs/r"))
