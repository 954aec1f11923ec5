"""Tables and figures from any folder of run directories; reruns nothing.

    python -m autolora.analysis.report FOLDER [FOLDER ...] [--out DIR]

Each FOLDER (outputs/, a multirun/ sweep, results/runs/NAME, ...) is walked for finished runs: directories with
the run's own metrics.json and config.yaml (finished_runs.py). Runs are grouped by everything that differs in their
resolved configs except the seed and the run-only keys (layout.RUN_ONLY); each group gives mean ± std over its
seeds. Per FOLDER, NAME = its name, DIR = FOLDER/report unless --out names another:
DIR/NAME.md (task x method pivots per metric, every group's details, whether seeds agree on the ranks),
DIR/NAME.csv (numbers), DIR/NAME.tex (booktabs), DIR/NAME_seeds.csv (rank and gates per matrix and seed) and
DIR/figures/NAME_{ranks,score_params,cost}.png. Provenance (command, commit, device, date, versions) comes from
the runs' metrics.json; an optional FOLDER/report.json adds a title and notes and may replace those lines.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autolora import predictions
from autolora.analysis import agreement, tables
from autolora.analysis.finished_runs import Run, find_runs
from autolora.console import tolerate_any_encoding
from autolora.files import write_owned
from autolora.layout import LEGACY_PREDICTIONS, PREDICTIONS
from autolora.method.ranks import NOISE_BOUND, gate_entropy, gate_offset, gate_spread

OWNED = ".autolora-report"  # in the output folder: the files the report wrote there, one a line
META_KEYS = ("title", "command", "commit", "device", "date", "notes")  # report.json, all optional


class ReportError(ValueError):
    """Nothing usable in a folder; the message is the one line the command prints."""


@dataclass
class Group:
    """Runs with one config up to the seed (and the run-only keys)."""

    task: str
    model: str
    method: str  # the label in the tables: the variant, plus the keys that tell same-variant groups apart
    runs: list[Run]

    @property
    def where(self) -> str:
        """'glue/rte · minilm · AutoLoRA', for messages."""
        return f"{self.task} · {self.model} · {self.method}"

    def by_seed(self) -> list[Run]:
        """The first run of each seed, in seed order."""
        return list({run.seed: run for run in reversed(self.runs)}.values())[::-1]


def group_runs(runs: Iterable[Run]) -> tuple[list[Group], list[str]]:
    """Runs grouped by config (seeds and run-only keys left out), with the warnings.

    The keys compared are those every run of the same task, model and variant has: a LoRA run holds no search.*
    keys (method.registry.unread_groups), so keys common to all runs would merge AutoLoRA runs of different search budgets."""
    by_variant: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.task, r.model, tables.method_key(r.variant), r.seed)):
        by_variant[(run.task, run.model, run.variant)].append(run)
    groups, warnings = [], []
    for (task, model, variant), members in by_variant.items():
        common = set.intersection(*(set(run.config) for run in members))
        buckets: dict[tuple, list[Run]] = defaultdict(list)
        for run in members:
            buckets[tuple(sorted((k, run.config[k]) for k in common))].append(run)
        differing = [k for k in sorted(common) if len({dict(config)[k] for config in buckets}) > 1]
        for config, bucket in buckets.items():
            shown = ", ".join(f"{k}={json.loads(dict(config)[k])}" for k in differing[:3])
            more = f", +{len(differing) - 3} keys" if len(differing) > 3 else ""
            group = Group(task, model, variant + (f" [{shown}{more}]" if differing else ""), bucket)
            groups.append(group)
            warnings += check_group(group, common)
    groups.sort(key=lambda g: (g.task, g.model, tables.method_key(g.method)))  # stable: ties keep run order
    return groups, warnings


def check_group(group: Group, common: set[str]) -> list[str]:
    """Repeated seeds, data or budgets that differ within the group, configs of different versions, noise."""
    warnings = [f"{group.where}: seed {seed} appears {count} times, so mean ± std counts it {count} times (the same "
                "run copied twice, or runs that differ only in keys the report ignores: layout.RUN_ONLY)"
                for seed, count in Counter(run.seed for run in group.runs).items() if count > 1]
    for key in group.runs[0].budget:
        values = {run.budget[key] for run in group.runs}
        if len(values) > 1:
            shown = sorted(values, key=lambda v: (not isinstance(v, int | float), v if isinstance(v, int | float) else str(v)))
            warnings.append(f"{group.where}: mixed {key} {shown} (different data or budgets "
                            "under one config)")
    if len({run.split for run in group.runs}) > 1:
        warnings.append(f"{group.where}: scores from different splits {sorted({run.split for run in group.runs})}")
    for key in sorted(set().union(*(run.config for run in group.runs)) - common):
        values = {run.config.get(key, "absent") for run in group.runs}
        if len(values) > 1:
            warnings.append(f"{group.where}: mixes {key} = {sorted(values)} (configs of different versions)")
    noisy = [run for run in group.runs if undecided(run)]
    if noisy:
        warnings.append(f"{group.where}: in {len(noisy)} of {len(group.runs)} runs the search left some matrices' "
                        "gates within rounding noise of the threshold (ranks.NOISE_BOUND): those ranks are noise")
    return warnings


def undecided(run: Run) -> bool:
    """Some matrix's gates all within ranks.NOISE_BOUND of the threshold (ranks.search_diagnostics' warning)."""
    if run.gates is None or run.threshold is None:
        return False
    return any(gate_offset(gate, run.threshold) < NOISE_BOUND * run.threshold for gate in run.gates.values())


def scale_of(metric: str) -> float:
    """Scores shown x100, except those not on a 0-1 scale (NIST, CIDEr)."""
    return 1.0 if metric in ("nist", "cider") else 100.0


def mean_std(values: list[float | None], scale: float) -> dict[str, float | None]:
    """{'mean', 'std'} on the shown scale; std None for one value, both None if any value is missing."""
    if any(v is None for v in values):
        return {"mean": None, "std": None}
    std = statistics.stdev(values) * scale if len(values) > 1 else None
    return {"mean": statistics.mean(values) * scale, "std": std}


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def seed_tables(group: Group) -> tuple[list[int], list[str], np.ndarray, np.ndarray] | None:
    """(seeds, matrices, ranks, gate entropies), arrays (seeds, matrices), for a searched group of 2+ seeds."""
    runs = [run for run in group.by_seed() if run.gates is not None]
    if len(runs) < 2:
        return None
    names = [name for name in runs[0].ranks if all(name in run.ranks and name in run.gates for run in runs)]
    ranks = np.array([[run.ranks[name] for name in names] for run in runs])
    entropies = np.array([[gate_entropy(run.gates[name]) for name in names] for run in runs])
    return [run.seed for run in runs], names, ranks, entropies


def summarise(group: Group) -> dict[str, Any]:
    """One row: scores mean ± std over the runs, ranks, parameters, times, gate spread, agreement across seeds."""
    runs = group.runs
    metrics = list(dict.fromkeys(m for run in runs for m in run.scores))
    spreads = [gate_spread(g) for run in runs if run.gates for g in run.gates.values()]
    searched = [run.search_s for run in runs if run.search_s is not None]
    row = {"task": group.task, "model": group.model, "method": group.method, "split": runs[0].split,
           "seeds": len({run.seed for run in runs}), "runs": len(runs), "main_metric": runs[0].main_metric,
           "scores": {m: mean_std([run.scores.get(m) for run in runs], scale_of(m)) for m in metrics},
           "mean_rank": statistics.mean(statistics.mean(run.ranks.values()) if run.ranks else 0.0 for run in runs),
           "trainable_params": round(statistics.mean(run.trainable_params for run in runs)),
           "search_s": _mean(searched), "retrain_s": statistics.mean(run.retrain_s for run in runs),
           "gate_spread_median": statistics.median(spreads) if spreads else None,
           "undecided_runs": sum(undecided(run) for run in runs) if spreads else None}
    tabled = seed_tables(group)
    if tabled is not None:
        row.update(agreement.seed_agreement(tabled[2], tabled[3]))
    return row


def add_costs(rows: list[dict[str, Any]]) -> None:
    """Per row the cost of a method (search + retrain seconds); for AutoLoRA rows, that cost over the total of
    the uniform-rank grid (every 'LoRA r=' row of the same task and model) when a grid of 2+ ranks exists."""
    for row in rows:
        row["cost_s"] = (row["search_s"] or 0.0) + row["retrain_s"]
    for row in rows:
        grid = [r for r in rows if (r["task"], r["model"]) == (row["task"], row["model"]) and r["method"].startswith("LoRA r=")]
        if row["method"].startswith("AutoLoRA") and len(grid) >= 2:
            total = sum(r["cost_s"] for r in grid)
            row["cost_vs_grid"], row["grid_size"] = (row["cost_s"] / total if total else None), len(grid)


def matrix_ranks(group: Group) -> tuple[list[int], list[tuple[str, list[int]]]] | None:
    """(seeds, [(matrix, rank per seed), ...]) of a searched group with 2+ seeds, for the per-matrix detail."""
    from autolora.analysis.figures import layer_and_kind

    tabled = seed_tables(group)
    if tabled is None:
        return None
    seeds, names, ranks, _ = tabled
    return seeds, [("{1} · layer {0}".format(*layer_and_kind(name)), column.tolist())
                   for name, column in zip(names, ranks.T, strict=True)]


def seeds_csv(groups: list[Group]) -> str:
    """One line per (group, matrix, seed) of every searched run: rank, gate spread and entropy."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "model", "method", "matrix", "seed", "rank", "gate_spread", "gate_entropy"])
    for group in groups:
        for run in group.runs:
            for name, gate in (run.gates or {}).items():
                writer.writerow([group.task, group.model, group.method, name, run.seed, run.ranks.get(name, ""),
                                 round(gate_spread(gate), 8), round(gate_entropy(gate), 8)])
    return buffer.getvalue()


def sample_generations(groups: list[Group], count: int = 4) -> str:
    """The first `count` sources of a generation task with each method's output (first seed), from its predictions
    (a run whose predictions cannot be read shows none)."""
    outputs = {}
    for group in groups:
        folder = group.by_seed()[0].path
        if not any((folder / name).is_file() for name in (PREDICTIONS, LEGACY_PREDICTIONS)):
            continue
        try:
            found = predictions.read(folder, ReportError)
        except ReportError:
            continue
        if found.kind == "generation":
            outputs[group.method] = {record["source"]: record["generated"] for record in found.records}
    if not outputs:
        return ""
    lines = ["## Sample generations", ""]
    for source in list(next(iter(outputs.values())))[:count]:
        lines.append(f"- `{source}`")
        lines += [f"  - {method}: {generated.get(source, '')}" for method, generated in outputs.items()]
    return "\n".join(lines) + "\n"


def _distinct(values: Iterable[Any]) -> str:
    """The one value, or each value with its number of runs (most common first)."""
    counts = Counter("unknown" if v is None else str(v) for v in values)
    if len(counts) == 1:
        return next(iter(counts))
    shown = [f"{value} ({count} runs)" for value, count in counts.most_common(4)]
    return "; ".join(shown) + (f"; and {len(counts) - 4} more" if len(counts) > 4 else "")


def read_meta(folder: Path) -> tuple[dict[str, str], list[str]]:
    """The optional report.json (title, notes, and provenance lines that replace those read from the runs)."""
    path = folder / "report.json"
    if not path.is_file():
        return {}, []
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {}, [f"ignored {path}: {err}"]
    if not isinstance(meta, dict):
        return {}, [f"ignored {path}: expected a mapping of {list(META_KEYS)}"]
    unknown = sorted(set(meta) - set(META_KEYS))
    return {k: str(v) for k, v in meta.items() if k in META_KEYS}, [f"{path}: ignored keys {unknown}"] if unknown else []


def provenance(runs: list[Run], meta: Mapping[str, str], folder: Path, command: str) -> dict[str, str]:
    """Command, commit, device, date and versions of the runs (report.json's lines replace theirs)."""
    dates = sorted(run.provenance["date"] for run in runs)
    return {
        "command": f"`{meta['command']}`" if "command" in meta else _distinct(
            f"`{run.provenance['command']}`" if run.provenance["command"] else None for run in runs),
        "commit": meta.get("commit") or _distinct(run.provenance["commit"] for run in runs),
        "device": meta.get("device") or _distinct(run.provenance["device"] for run in runs),
        "date": meta.get("date") or (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"),
        "versions": _distinct(run.provenance["versions"] for run in runs),
        "runs": f"{len(runs)} run directories in {folder} (metrics.json and config.yaml of each)",
        "regenerate": f"`{command}`",
    }


def page(rows: list[dict[str, Any]], groups: list[Group], lines: Mapping[str, str], title: str, notes: str,
         warnings: list[str]) -> str:
    """The markdown report: provenance, warnings, the main-metric pivot, details, each metric, the seeds."""
    split = "/".join(sorted({row["split"] for row in rows}))
    out = [f"# {title}", "", *[f"- {k}: {v}" for k, v in lines.items()], ""]
    if notes:
        out += [notes, ""]
    if warnings:
        out += ["**Warnings**", "", *[f"- {w}" for w in warnings], ""]
    out += [f"## Main metric per task ({split}, x100 except NIST and CIDEr; mean ± std over seeds)", "",
            tables.pivot_markdown(rows, None), "## Every group", "", tables.details_markdown(rows)]
    for metric in dict.fromkeys(m for row in rows for m in row["scores"]):
        out += [f"## {metric} ({split})", "", tables.pivot_markdown(rows, metric)]
    return "\n".join(out) + "\n" + tables.agreement_markdown(rows, [matrix_ranks(group) for group in groups])


def write_report(folder: Path, out: Path, runs: list[Run], warnings: list[str],
                 command: str) -> tuple[list[Path], list[str]]:
    """Group, summarise and write NAME.md/.csv/.tex, NAME_seeds.csv and the figures into `out`."""
    from autolora.analysis import report_figures
    from autolora.analysis.figures import plt

    name = folder.resolve().name
    meta, meta_warnings = read_meta(folder)
    groups, group_warnings = group_runs(runs)
    warnings = warnings + meta_warnings + group_warnings
    rows = [summarise(group) for group in groups]
    add_costs(rows)
    title = meta.get("title", f"Runs in {folder}")
    text = page(rows, groups, provenance(runs, meta, folder, command), title, meta.get("notes", ""), warnings)
    samples = sample_generations(groups)
    split = "/".join(sorted({row["split"] for row in rows}))
    latex = "\n".join(tables.pivot_latex(rows, metric, f"{name}: {metric or 'main metric'} ({split}), mean ± std over seeds")
                      for metric in [None, *dict.fromkeys(m for row in rows for m in row["scores"])])
    outputs = {f"{name}.md": text + ("\n" + samples if samples else ""), f"{name}.csv": tables.csv_text(rows),
               f"{name}.tex": latex}
    if any(run.gates for run in runs):
        outputs[f"{name}_seeds.csv"] = seeds_csv(groups)
    figures = {"ranks": report_figures.ranks_figure(groups, f"ranks found by AutoLoRA, every seed ({name})"),
               "score_params": report_figures.score_params_figure(rows), "cost": report_figures.cost_figure(rows)}
    try:
        for kind, fig in figures.items():
            if fig is not None:
                image = io.BytesIO()
                fig.savefig(image, format="png", dpi=120, bbox_inches="tight")
                outputs[f"figures/{name}_{kind}.png"] = image.getvalue()
    finally:
        for fig in figures.values():
            if fig is not None:
                plt.close(fig)
    return write_owned(out, outputs, OWNED, ReportError), warnings


def report_folder(folder: Path, out: Path | None = None) -> tuple[list[Path], list[str]]:
    """Tables and figures of every finished run below `folder`, into `out` (default folder/report); returns the
    paths written and the warnings. ReportError when the folder holds no usable run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    runs, warnings = find_runs(folder)
    if not runs:
        reasons = f" ({len(warnings)} skipped; first: {warnings[0]})" if warnings else ""
        raise ReportError(f"{folder}: no finished runs below it (a metrics.json beside a config.yaml){reasons}")
    target = folder / "report" if out is None else Path(out)
    command = f"python -m autolora.analysis.report {folder}" + ("" if out is None else f" --out {out}")
    return write_report(folder, target, runs, warnings, command)


def main(argv: list[str] | None = None) -> int:
    """The command line: one report per folder; exit status 2 if any folder had nothing usable."""
    tolerate_any_encoding()
    parser = argparse.ArgumentParser(prog="python -m autolora.analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding run directories at any depth")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the tables and figures go (default: FOLDER/report for each FOLDER)")
    args = parser.parse_args(argv)
    failed, names = 0, {}
    for folder in args.folders:
        name = folder.resolve().name
        if args.out is not None and names.setdefault(name, folder) != folder:  # NAME.md would be overwritten
            print(f"error: {folder}: its report would overwrite that of {names[name]} in {args.out} (same folder "
                  "name); give it its own --out", file=sys.stderr)
            failed += 1
            continue
        try:
            written, warnings = report_folder(folder, args.out)
        except (ReportError, OSError) as err:  # OSError: an output folder that cannot be written
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        for path in written:
            print(path)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
