"""Aggregate run directories (metrics.json, config.yaml) into tables and figures; reruns nothing.

    python -m autolora.report results/runs/glue_minilm [more folders ...]

A folder under results/runs/ holds compact copies of run directories plus report.json, the provenance
of those runs (title, command, commit, device, date, notes). Each run becomes one row; rows group by
(task, model, variant) with mean ± std over seeds. Writes results/NAME.md, results/NAME.csv and
results/figures/NAME_ranks.png (NAME = the folder's name). `make report` does this for every folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autolora.files import write_atomic, write_text


@dataclass(frozen=True)
class Run:
    """One finished run, as read back from its directory."""

    path: Path
    task: str
    model: str
    variant: str
    seed: int
    main_metric: str
    dev: dict[str, float]
    ranks: dict[str, int]
    trainable_params: int
    search_s: float | None
    retrain_s: float
    versions: dict[str, str]
    device: str


def variant_of(config: Mapping[str, Any]) -> str:
    """A short label for the method and its ablation settings, e.g. 'AutoLoRA', 'LoRA r=8', 'AutoLoRA (eta=0)',
    'AdaLoRA r=4 (lr x10)'."""
    if config["method"] == "lora":
        return f"LoRA r={config['lora']['r']}"
    if config["method"] == "adalora":
        # Runs from before adalora.lr_scale existed trained at retrain.lr itself: label them x1.
        lr_scale = float(config["adalora"].get("lr_scale", 1.0))
        return f"AdaLoRA r={config['adalora']['target_r']} (lr x{lr_scale:g})"
    search = config["search"]
    notes = []
    if search["ranks_file"]:
        notes.append("given ranks")
    if search["alpha_norm"] != "softmax":
        notes.append(f"alpha {search['alpha_norm']}")
    if float(search["eta"]) == 0:
        notes.append("eta=0")
    return "AutoLoRA" + (f" ({', '.join(notes)})" if notes else "")


def read_run(path: Path) -> Run:
    """Parse one run directory (it must hold metrics.json and config.yaml)."""
    metrics = json.loads((path / "metrics.json").read_text())
    config = yaml.safe_load((path / "config.yaml").read_text())
    search = metrics.get("search")
    rescored = path / "metrics_rescored.json"  # autolora.rescore: same predictions, scored where METEOR runs
    dev = json.loads(rescored.read_text())["dev"] if rescored.is_file() else metrics["retrain"]["dev"]
    return Run(
        path=path, task=metrics["task"], model=metrics["model"], variant=variant_of(config), seed=metrics["seed"],
        main_metric=metrics["main_metric"], dev=dev, ranks=metrics["ranks"],
        trainable_params=metrics["retrain"]["trainable_params"], search_s=search and search["wall_time_s"],
        retrain_s=metrics["retrain"]["wall_time_s"], versions=metrics["versions"], device=metrics["device"],
    )


def find_runs(folders: Iterable[Path]) -> list[Run]:
    """Every finished run (a metrics.json next to a config.yaml) below the given folders."""
    found = sorted({p.parent for folder in folders for p in Path(folder).rglob("metrics.json")})
    return [read_run(p) for p in found if (p / "config.yaml").is_file()]


def scale_of(metric: str) -> float:
    """Scores shown x100, except those not on a 0-1 scale (NIST, CIDEr)."""
    return 1.0 if metric in ("nist", "cider") else 100.0


def mean_std(values: list[float | None], scale: float = 100.0) -> str:
    """'87.61 ± 0.42' (x100), the single value for one seed, 'n/a' where a metric could not be computed."""
    if any(v is None for v in values):
        return "n/a"
    if len(values) == 1:
        return f"{values[0] * scale:.2f}"
    return f"{statistics.mean(values) * scale:.2f} ± {statistics.stdev(values) * scale:.2f}"


def group(runs: Iterable[Run]) -> dict[tuple[str, str, str], list[Run]]:
    """(task, model, variant) -> runs, in a stable order."""
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    def natural(text: str) -> list:  # "LoRA r=2" before "LoRA r=16"
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]

    for run in sorted(runs, key=lambda r: (r.task, r.model, natural(r.variant), r.seed)):
        groups[(run.task, run.model, run.variant)].append(run)
    return dict(groups)


def table_rows(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per (task, model, variant): metrics mean ± std over seeds, ranks, parameters, times."""
    rows = []
    for (task, model, variant), members in group(runs).items():
        main = members[0].main_metric
        metric_names = [m for m, v in members[0].dev.items() if v is None or isinstance(v, int | float)]
        ranks = [statistics.mean(r.ranks.values()) for r in members]
        rows.append({
            "task": task, "model": model, "variant": variant, "seeds": len(members), "main_metric": main,
            **{f"dev_{m}": mean_std([r.dev[m] for r in members], scale=scale_of(m)) for m in metric_names},
            "mean_rank": f"{statistics.mean(ranks):.2f}",
            "trainable_params": f"{round(statistics.mean(r.trainable_params for r in members)):,}",
            "search_s": "-" if members[0].search_s is None else f"{statistics.mean(r.search_s for r in members):.1f}",
            "retrain_s": f"{statistics.mean(r.retrain_s for r in members):.1f}",
        })
    return rows


def add_costs(rows: list[dict[str, Any]]) -> None:
    """Per row the cost of a method (search + retrain seconds); for AutoLoRA rows, that cost over the total of
    the uniform-rank grid (every 'LoRA r=' row of the same task and model) when a grid of 2+ ranks exists."""
    for row in rows:
        search = 0.0 if row["search_s"] == "-" else float(row["search_s"])
        row["cost_s"] = f"{search + float(row['retrain_s']):.1f}"
    for row in rows:
        grid = [r for r in rows if (r["task"], r["model"]) == (row["task"], row["model"]) and r["variant"].startswith("LoRA r=")]
        if row["variant"].startswith("AutoLoRA") and len(grid) >= 2:
            total = sum(float(r["cost_s"]) for r in grid)
            row["cost_vs_grid"] = f"{float(row['cost_s']) / total:.2f} (grid of {len(grid)})" if total else "n/a"


def markdown(rows: list[dict[str, Any]], provenance: Mapping[str, str], title: str, notes: str) -> str:
    """A markdown page: provenance first, then the table (dev metrics x100)."""
    metric_columns = sorted({k for row in rows for k in row if k.startswith("dev_")})
    header = ["task", "model", "variant", "seeds", *metric_columns, "mean_rank", "trainable_params", "search_s", "retrain_s",
              "cost_s", *(["cost_vs_grid"] if any("cost_vs_grid" in row for row in rows) else [])]
    lines = [f"# {title}", "", *[f"- {k}: {v}" for k, v in provenance.items()], ""]
    if notes:
        lines += [notes, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(col, "")) for col in header) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def ranks_figure(runs: list[Run], title: str):
    """Per-layer rank heatmaps, one panel per (task, model) of the AutoLoRA runs (first seed)."""
    from autolora.figures import plt, rank_grid

    chosen = {}
    for run in sorted(runs, key=lambda r: r.seed):
        if run.variant == "AutoLoRA":
            chosen.setdefault((run.task, run.model), run)
    if not chosen:
        return None
    fig, axes = plt.subplots(len(chosen), 1, figsize=(7, 1.3 * len(chosen) + 0.8), squeeze=False)
    for ax, ((task, model), run) in zip(axes[:, 0], sorted(chosen.items()), strict=True):
        kinds, layers, grid = rank_grid(run.ranks)
        top = max(8.0, float(np.nanmax(grid)))
        ax.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (row, col), value in np.ndenumerate(grid):
            ax.text(col, row, f"{int(value)}", ha="center", va="center", color="w" if value < top / 2 else "k", fontsize=8)
        ax.set_yticks(range(len(kinds)), kinds)
        ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_title(f"{task} · {model} (seed {run.seed})", fontsize=9)
    axes[-1, 0].set_xlabel("layer")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def sample_generations(runs: list[Run], count: int = 4) -> str:
    """The first `count` sources of a generation task with each variant's output (seed 0), from predictions.txt."""
    tables = {}
    for run in sorted(runs, key=lambda r: (r.variant, r.seed)):
        path = run.path / "predictions.txt"
        if path.is_file() and run.variant not in tables:
            rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
            tables[run.variant] = dict(rows)
    if not tables:
        return ""
    sources = list(next(iter(tables.values())))[:count]
    lines = ["## Sample generations", ""]
    for source in sources:
        lines.append(f"- `{source}`")
        lines += [f"  - {variant}: {generated.get(source, '')}" for variant, generated in tables.items()]
    return "\n".join(lines) + "\n"


def write_report(runs: list[Run], out: Path, title: str, provenance: Mapping[str, str], notes: str = "") -> list[Path]:
    """Write OUT.md, OUT.csv and OUT_ranks.png; returns the paths written."""
    rows = table_rows(runs)
    add_costs(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = markdown(rows, provenance, title, notes)
    samples = sample_generations(runs)
    written = [write_text(out.with_suffix(".md"), page + ("\n" + samples if samples else "")),
               write_text(out.with_suffix(".csv"), csv_text(rows))]
    from autolora.figures import plt

    figures = {"ranks": ranks_figure(runs, f"ranks found by AutoLoRA ({out.name})"),
               "score_params": score_params_figure(runs, rows), "cost": cost_figure(rows)}
    for kind, fig in figures.items():
        if fig is not None:
            path = out.parent / "figures" / f"{out.name}_{kind}.png"
            written.append(write_atomic(path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120), binary=True))
            plt.close(fig)
    return written


def _panels(count: int, width: float = 4.0):
    from autolora.figures import plt

    fig, axes = plt.subplots(1, count, figsize=(width * count, 3.4), squeeze=False)
    return fig, axes[0]


def score_params_figure(runs: list[Run], rows: list[dict[str, Any]]):
    """Main metric (mean ± std over seeds) against trainable parameters, one panel per task, one point per variant."""
    tasks = sorted({(r["task"], r["model"]) for r in rows})
    if len(rows) < 2:
        return None
    from autolora.figures import plt

    fig, axes = _panels(len(tasks))
    groups = group(runs)
    variants = list(dict.fromkeys(v for (_, _, v) in groups))  # in table order
    colour = {v: plt.get_cmap("tab20")(i % 20) for i, v in enumerate(variants)}  # one colour per variant everywhere
    for ax, (task, model) in zip(axes, tasks, strict=True):
        metric = "score"
        for (t, m, variant), members in groups.items():
            if (t, m) != (task, model) or members[0].dev.get(members[0].main_metric) is None:
                continue
            metric = members[0].main_metric
            scores = [scale_of(metric) * r.dev[metric] for r in members]
            params = statistics.mean(r.trainable_params for r in members)
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            ax.errorbar(params, statistics.mean(scores), yerr=spread, fmt="o", capsize=3, label=variant,
                        color=colour[variant])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(metric)
        ax.set_title(f"{task} · {model}", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def cost_figure(rows: list[dict[str, Any]]):
    """Wall time per method: AutoLoRA (search + retrain) and AdaLoRA beside the whole uniform-rank grid."""
    tasks = sorted({(r["task"], r["model"]) for r in rows})
    grids = {t: [r for r in rows if (r["task"], r["model"]) == t and r["variant"].startswith("LoRA r=")] for t in tasks}
    tasks = [t for t in tasks if len(grids[t]) >= 2]
    if not tasks:
        return None
    fig, axes = _panels(len(tasks), 3.2)
    for ax, key in zip(axes, tasks, strict=True):
        bars = {r["variant"]: float(r["cost_s"]) for r in rows
                if (r["task"], r["model"]) == key and not r["variant"].startswith("LoRA r=")}
        bars[f"LoRA grid ({len(grids[key])} ranks)"] = sum(float(r["cost_s"]) for r in grids[key])
        ax.barh(list(bars), list(bars.values()))
        ax.set_xlabel("wall time, s (search + retrain)")
        ax.set_title(f"{key[0]} · {key[1]}", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


PROVENANCE_KEYS = ("title", "command", "commit", "device", "date", "notes")


def report_folder(folder: Path, results: Path) -> list[Path]:
    """Tables and figure for one results/runs/NAME folder, next to it in `results`."""
    meta = json.loads((folder / "report.json").read_text())
    missing = [k for k in PROVENANCE_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{folder / 'report.json'}: missing {missing}")
    runs = find_runs([folder])
    if not runs:
        raise ValueError(f"{folder}: no finished runs (metrics.json + config.yaml)")
    provenance = {
        "command": f"`{meta['command']}`", "commit": meta["commit"], "device": meta["device"], "date": meta["date"],
        "versions": ", ".join(f"{k} {v}" for k, v in runs[0].versions.items()),
        "runs": f"{len(runs)} run directories in {folder} (metrics.json, ranks.json, config.yaml of each)",
        "regenerate": f"`python -m autolora.report {folder}` (or `make report`)",
    }
    return write_report(runs, results / folder.name, meta["title"], provenance, meta["notes"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="results/runs/NAME folders (each with report.json)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where tables and figures go")
    args = parser.parse_args(argv)
    for folder in args.folders:
        for path in report_folder(folder, args.results):
            print(path)


if __name__ == "__main__":
    main()
