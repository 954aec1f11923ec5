"""The report's figures, from its groups of runs and its summary rows (analysis/report.py draws them on demand:
importing matplotlib costs a second)."""

from __future__ import annotations

from typing import Any

from autolora.analysis.figures import cost_bars, plt, ranks_by_seed, score_params


def ranks_figure(groups: list, title: str):  # report.Group
    """The ranks of every AutoLoRA run: one row per group, one panel per seed, one colour scale."""
    chosen = [(group.method if len({g.task for g in groups}) == 1 else f"{group.task} · {group.method}",
               [(run.seed, run.ranks) for run in group.by_seed()]) for group in groups
              if group.runs[0].method == "autolora" and any(run.ranks for run in group.runs)]
    if not chosen:
        return None
    runs = [run for group in groups if group.runs[0].method == "autolora" for run in group.runs]
    top = max([len(g) for run in runs for g in (run.gates or {}).values()] +
              [max(run.ranks.values(), default=0) for run in runs] + [1])
    return ranks_by_seed(chosen, top, title)


def score_params_figure(rows: list[dict[str, Any]]):
    """Main metric (mean ± std over seeds) against trainable parameters, one panel per task, one point per method."""
    if len(rows) < 2:
        return None
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    panels = []
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in rows):
        points = [(r["method"], r["trainable_params"], r["scores"][r["main_metric"]]["mean"],
                   r["scores"][r["main_metric"]]["std"] or 0.0) for r in rows
                  if (r["task"], r["model"]) == (task, model)
                  and (r["scores"].get(r["main_metric"]) or {}).get("mean") is not None]
        metric = next((r["main_metric"] for r in rows if r["task"] == task), "score")
        panels.append((f"{task} · {model}", metric, points))
    return score_params(panels, colours)


def cost_figure(rows: list[dict[str, Any]]):
    """Wall time per method: AutoLoRA (search + retrain) and AdaLoRA beside the whole uniform-rank grid."""
    panels = []
    for key in dict.fromkeys((r["task"], r["model"]) for r in rows):
        grid = [r for r in rows if (r["task"], r["model"]) == key and r["method"].startswith("LoRA r=")]
        if len(grid) < 2:
            continue
        bars = {r["method"]: r["cost_s"] for r in rows
                if (r["task"], r["model"]) == key and not r["method"].startswith("LoRA r=")}
        bars[f"LoRA grid ({len(grid)} ranks)"] = sum(r["cost_s"] for r in grid)
        panels.append((f"{key[0]} · {key[1]}", bars))
    return cost_bars(panels) if panels else None
