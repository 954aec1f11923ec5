"""The one-screen summary printed at the end of a run, and the flat metrics sent to the tracker."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autolora.method import noise_test


def evaluated_splits(phase: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A phase record's metrics by evaluation split (dev, test), the headline split (`eval_split`) last.
    Runs written before `eval_split` existed hold one split under "dev"."""
    headline = phase.get("eval_split", "dev")
    found = {split: phase[split] for split in ("dev", "test") if split != headline and split in phase}
    return {**found, headline: phase.get(headline, {})}


def flat_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for phase in ("search", "retrain"):
        for split, scores in evaluated_splits(record.get(phase, {})).items():
            for key, value in scores.items():
                out[f"{phase}/{split}_{key}"] = value
        if phase in record:
            out[f"{phase}/wall_time_s"] = record[phase]["wall_time_s"]
    return out


def score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_text(record: Mapping[str, Any], run_dir: Path) -> str:
    """The one-screen summary printed at the end of a run."""
    from autolora.analysis.figures import rank_grid

    main = record["main_metric"]
    sizes = " / ".join(f"{record[f'n_{split}']} {split}" for split in ("dev", "test") if f"n_{split}" in record)
    lines = [f"autolora-run  {record['task']} · {record['model']} · {record['method']} · seed {record['seed']}"
             f"  ({record['device']}, {record['precision']})",
             f"data     {record['data']}: {record['n_train']} train / {sizes}"]
    if "search" in record:
        s = record["search"]
        scores = "; ".join(f"{split} {main} {score(v.get(main))}" for split, v in evaluated_splits(s).items() if v)
        lines.append(f"search   {s['steps']} steps in {s['wall_time_s']:.1f} s; {scores or 'not evaluated'};"
                     f" threshold {s['threshold']:.4g}")
        lines += gate_lines(s)
    lines += target_lines(record)
    kinds, layers, grid = rank_grid(record["ranks"])
    lines.append(f"ranks    from {ranks_origin(record)}")
    lines.append("         layer " + " ".join(f"{layer:>3}" for layer in layers))
    for kind, row in zip(kinds, grid, strict=True):
        lines.append(f"         {kind:<5} " + " ".join("  -" if np.isnan(v) else f"{int(v):>3}" for v in row))
    values = list(record["ranks"].values())
    lines.append(f"         mean rank {np.mean(values):.2f}, {sum(v == 0 for v in values)} of {len(values)} "
                 "matrices without LoRA")
    r = record["retrain"]
    scores = "; ".join(f"{split} " + ", ".join(f"{k} {score(v)}" for k, v in values.items() if not isinstance(v, dict))
                       for split, values in evaluated_splits(r).items())
    lines.append(f"retrain  {r['steps']} steps in {r['wall_time_s']:.1f} s; {scores}; "
                 f"{r['trainable_params']:,} trainable params")
    lines += capture_lines(record)
    lines.append(f"run dir  {run_dir}")
    wandb = record.get("wandb")
    if wandb:
        lines.append(f"W&B      {wandb['url']}" if wandb["mode"] == "online" else
                     f"W&B      offline run {wandb['dir']}; upload it with: {wandb['sync']}")
    return "\n".join(lines)


def target_lines(record: Mapping[str, Any]) -> list[str]:
    """Which projections got LoRA (models.targets.describe), and whether the architecture or the config chose
    them; none for a record written before targets were recorded."""
    targets = record.get("targets")
    if targets is None:
        return []
    how = ("found in the architecture: the query and value projections of its attention blocks"
           if targets["from"] == "architecture" else "model.targets")
    per_head = f"; the slices of each of its {targets['groups']} heads" if targets["groups"] > 1 else ""
    kinds = dict.fromkeys(name.rpartition(".")[2] for name in targets["matrices"])  # full paths: their last names
    return [f"targets  {', '.join(kinds)}: {len(record['ranks'])} matrices ({how}{per_head})"]


def capture_lines(record: Mapping[str, Any]) -> list[str]:
    """Per phase: the mode it ran in and why (engine/auto_compile.py), and what capture cost
    (engine.capture.CaptureStats: part of the phase's wall time above). Records before compile_reason: the
    cost alone."""
    reasons = record.get("compile_reason") or {}
    lines = []
    for phase in ("search", "retrain"):
        if phase not in record:
            continue
        parts = [f"{phase} {reasons[phase]}"] if phase in reasons else []
        capture = record[phase].get("capture")
        if capture:
            parts.append(f"{capture['graphs']} graphs, warm-up {capture['warmup_s']:.1f} s "
                         f"({capture['warmup_steps']} eager steps, {capture['compiles']} compiles) + capture "
                         f"{capture['capture_s']:.1f} s")
        if parts:
            lines.append(("compile  " if not lines else "         ") + "; ".join(parts))
    if record.get("compile_cache"):
        lines.append(f"         compile cache {record['compile_cache']}")
    return lines


def gate_lines(search: Mapping[str, Any]) -> list[str]:
    """The search's gate diagnostics (ranks.search_diagnostics) and its noise warning; none for old records."""
    if "diagnostics" not in search:  # a ranks.json from before the diagnostics (resumed run)
        return []
    d = search["diagnostics"]["summary"]
    lines = [f"gates    spread (max - min) over {d['matrices']} matrices: min {d['spread_min']:.2g} / median"
             f" {d['spread_median']:.2g} / max {d['spread_max']:.2g}; mean entropy {d['entropy_mean']:.4f}"
             f" (uniform {d['entropy_uniform']:.4f})"]
    noise = search.get("noise_test")
    if noise is not None and noise["verdict"] == noise_test.SUPPORTED:
        lines.append(f"noise    {noise_test.describe(noise)}")
    if search["warning"]:
        lines.append(f"warning  {search['warning']}")
    return lines


def ranks_origin(record: Mapping[str, Any]) -> str:
    """Where a run's ranks came from, in words: its own search, a ranks file, or the baseline's rule."""
    ranks_from = record.get("ranks_from")
    if ranks_from == "search":
        return "this run's search (ranks.json)"
    if ranks_from == "ranks_file":
        readout = f"its {record['ranks_readout']} readout, " if record.get("ranks_readout") else ""
        return f"search.ranks_file={record['ranks_file']} ({readout}no search in this run)"
    if ranks_from == "uniform":
        return "method=lora: the same rank everywhere (lora.r)"
    if ranks_from == "adalora":
        return "method=adalora: AdaLoRA's pruning during training"
    if ranks_from == "eva":
        return "method=eva: EVA's explained-variance split of eva.r x modules, before training"
    return "unknown (a run written before ranks_from existed)"


