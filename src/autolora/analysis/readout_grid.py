"""Readouts retrained at equal parameters over several tasks (issues #27, #31): one line per (search variant,
readout) with each task's paired difference to the nearest uniform LoRA arm and the pooled paired test.

    python -m autolora.analysis.readout_grid ROOT [--uniform-from VARIANT] [--write FILE] [--title HEADING]

ROOT has the layout scripts/device_readouts.sh writes: ROOT/VARIANT/TASK/sSEED/ARM (a search per seed, its
readouts' retrains), the uniform arms under ROOT/<--uniform-from>/TASK/sSEED/lora_r*. Each (variant, task) is one
table of analysis.readout_retrain (the same pairing by ranks, the same recipe check); this pools its paired
differences over tasks: the mean over every (task, seed) pair and a two-sided Wilcoxon signed-rank test on them.
Reads only.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from autolora.analysis.agreement import seed_agreement
from autolora.analysis.finished_runs import find_runs
from autolora.analysis.readout_retrain import arms_of, nearest_uniform, provenance
from autolora.analysis.tables import print_or_write_section
from autolora.errors import ConfigError

SECTION = "## Readouts retrained at equal parameters on MiniLM GLUE, four tasks (issues #27, #31)"


def task_rows(root: Path, variant: str, task: str, uniform_from: str) -> tuple[list[dict], list]:
    """Per readout arm of one (variant, task): its label, per-seed differences to the nearest uniform arm, that
    arm's label, the mean parameters of both and the ranks' agreement across seeds; and the runs read."""
    runs, _ = find_runs(root / variant / task)
    if variant != uniform_from:
        for seed_dir in sorted((root / uniform_from / task).glob("s*")):
            for arm in sorted(seed_dir.glob("lora_r*/")):
                runs = [*runs, *find_runs(arm)[0]]
    readouts, uniform, seeds = arms_of(runs)
    if not uniform:
        raise ConfigError(f"{root / variant / task}: no uniform LoRA arm with every seed "
                          f"(looked under {root / uniform_from / task})")
    rows = []
    for arm in readouts:
        near = nearest_uniform(float(arm.params(seeds).mean()), uniform, seeds)
        rho = seed_agreement(arm.ranks, None)["rank_spearman"]
        rows.append({"label": arm.label, "diff": arm.scores(seeds) - near.scores(seeds), "near": near.label,
                     "params": float(arm.params(seeds).mean()), "near_params": float(near.params(seeds).mean()),
                     "score": float(arm.scores(seeds).mean()), "rho": rho, "shared": bool(arm.shared)})
    return rows, runs


def wilcoxon_p(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p over the pairs; None when every difference is 0."""
    if not np.any(np.abs(diffs) > 1e-12):
        return None
    return float(stats.wilcoxon(diffs, zero_method="wilcox").pvalue)


def grid(root: Path, uniform_from: str) -> tuple[str, list]:
    """The pooled table (markdown) and every run read."""
    variants = sorted(p.name for p in root.iterdir() if p.is_dir())
    if uniform_from not in variants:
        found = ", ".join(variants[:6]) + (f" and {len(variants) - 6} more" if len(variants) > 6 else "")
        raise ConfigError(f"{root}: no folder {uniform_from!r} for the uniform arms (found: {found or 'none'})")
    tasks = sorted({t.name for v in variants for t in (root / v).iterdir() if t.is_dir()})
    lines = ["| search | readout | " + " | ".join(f"{t}: Δ pp (vs), ρ" for t in tasks)
             + " | pooled Δ pp (pairs) | Wilcoxon p |", "|---|---|" + "---|" * (len(tasks) + 2)]
    every_run = []
    for variant in variants:
        by_task = {}
        for task in tasks:
            if (root / variant / task).is_dir():
                by_task[task], runs = task_rows(root, variant, task, uniform_from)
                every_run += runs
        labels = list(dict.fromkeys(r["label"] for rows in by_task.values() for r in rows))
        for label in labels:
            cells, pooled = [], []
            for task in tasks:
                row = next((r for r in by_task.get(task, []) if r["label"] == label), None)
                if row is None:
                    cells.append("—")
                    continue
                pooled += list(row["diff"])
                rho = "ρ —" if row["rho"] is None else f"ρ {row['rho']:+.2f}"
                cells.append(f"{row['diff'].mean() * 100:+.1f} ({row['near'].removeprefix('LoRA ')}, "
                             f"{row['params'] / row['near_params']:.2f}x params), {rho}")
            diffs = np.array(pooled)
            p = wilcoxon_p(diffs)
            lines.append(f"| {variant} | {label} | " + " | ".join(cells) + f" | {diffs.mean() * 100:+.2f} "
                         f"({len(diffs)}) | {'—' if p is None else f'{p:.3f}'} |")
    return "\n".join(lines), every_run


def section(root: Path, uniform_from: str, argv: Sequence[str], title: str = SECTION) -> str:
    table, runs = grid(root, uniform_from)
    return "\n".join([
        title, "",
        f"- table: `python -m autolora.analysis.readout_grid {shlex.join(argv)}`",
        f"- runs: {len({r.path for r in runs})} under {root}; {provenance(runs)}",
        "- Δ: the readout's retrained dev score minus the uniform LoRA arm nearest in trainable parameters (named, "
        "with the parameter ratio), mean over seeds; ρ: the readout's ranks across seeds (mean Spearman over seed "
        "pairs); pooled: every (task, seed) pair, two-sided Wilcoxon signed-rank",
        "", table, ""])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m autolora.analysis.readout_grid",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="ROOT/VARIANT/TASK/sSEED/ARM (scripts/device_readouts.sh)")
    parser.add_argument("--uniform-from", default="softmax", help="the variant folder holding the uniform arms")
    parser.add_argument("--write", type=Path, help="a markdown file whose section this table replaces")
    parser.add_argument("--title", default=SECTION)
    args = parser.parse_args(argv)
    try:
        if not args.root.is_dir():
            raise ConfigError(f"{args.root}: not a folder")
        text = section(args.root, args.uniform_from, argv, args.title)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print_or_write_section(text, args.write, args.title)


if __name__ == "__main__":
    main()
