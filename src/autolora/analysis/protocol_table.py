"""The table of a matrix run under the selection protocol (cli/protocol.py): results/NAME.md in the paper's layout.

Reads ROOT/final/<experiment>/<spec>/seed-<n>/ (metrics.json, config.yaml, ranks.json) and ROOT/selection.json;
writes NAME.md (tasks as columns, average, trainable parameters, the chosen learning rates, the paired tests
of results/NAME_protocol.md, cost, the ranks' agreement across seeds) and figures/NAME_ranks_<task>.png.

    python -m autolora.analysis.protocol_table ROOT --name glue_base --device "NVIDIA H100" --command "..."
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from autolora.analysis import agreement, compare_seeds, figures
from autolora.analysis.report import OWNED, ReportError
from autolora.analysis.tables import markdown_table
from autolora.files import read_json, read_text, write_owned
from autolora.layout import CONFIG, METRICS, RANKS
from autolora.provenance import git_commit

UNIFORM = ("lora_r2", "lora_r4", "lora_r8")
SEARCHED = ("autolora", "autolora_e20", "autolora_released")
LABELS = {"lora_r2": "LoRA r=2", "lora_r4": "LoRA r=4", "lora_r8": "LoRA r=8", "autolora": "AutoLoRA (paper)",
          "autolora_e20": "AutoLoRA, 20 search epochs", "autolora_released": "AutoLoRA (released code)",
          "adalora": "AdaLoRA (target r=4)", "eva": "EVA (r=4, rho=2)"}
# Not run here: RoBERTa-base, LoRA r=8 from the LoRA paper (30+ epochs); AutoLoRA's paper gives its average only.
PAPER = {"RoBERTa-base LoRA r=8 (LoRA paper; not run here)": {"rte": 86.6, "mrpc": 89.7, "stsb": 91.5, "cola": 63.4}}


def read_finals(root: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """(task, spec) -> seed -> {score, params, gpu_s, ranks, lr}; task is the experiment's GLUE task name."""
    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for path in sorted(root.glob(f"final/*/*/seed-*/{METRICS}")):
        folder = path.parent
        metrics = read_json(path, ReportError)
        found = read_json(folder / RANKS, ReportError) if (folder / RANKS).exists() else {}
        try:
            config = yaml.safe_load(read_text(folder / CONFIG, ReportError))
            task = metrics["task"].split("/")[-1]
            phases = [metrics[p] for p in ("search", "retrain") if metrics.get(p)]
            runs[(task, folder.parent.name)][int(config["seed"])] = {
                "score": float(metrics["retrain"]["dev"][metrics["main_metric"]]),
                "params": int(metrics["retrain"]["trainable_params"]),
                "gpu_s": sum(float(p.get("gpu_seconds") or p.get("wall_time_s") or 0) for p in phases),
                "ranks": found.get("ranks") or metrics.get("ranks"), "lr": float(config["retrain"]["lr"]),
                "readouts": agreement.readout_values(found)}
        except (KeyError, TypeError, AttributeError, ValueError, yaml.YAMLError) as err:  # a folder not a run's
            raise ReportError(f"{folder}: not a finished run of the matrix ({type(err).__name__}: {err})") from None
    return runs


def readout_rows(runs, tasks) -> list[list[str]]:
    """Per task, searched arm and readout: the seeds' mean Spearman rho over matrices and its permutation p."""
    rows = []
    for t in tasks:
        for spec in (s for s in SEARCHED if len(runs.get((t, s), {})) >= 2):
            seeds = [r["readouts"] for _, r in sorted(runs[(t, spec)].items())]
            for readout, mean, rho, p in agreement.by_readout(seeds):
                rows.append([t.upper(), LABELS[spec], readout,
                             "–" if readout == agreement.UPDATE_NORM else f"{mean:.2f}",
                             "–" if rho is None else f"{rho:+.2f}", "–" if p is None else f"{p:.3f}"])
    return rows


def across_task_rows(runs, tasks) -> list[list[str]]:
    """Per searched arm and readout: Spearman rho over the matrices between seeds of the same task and between
    seeds of different tasks (compare_seeds.across_tasks). Agreement that is as high across tasks is the model's
    structure, not the task's need."""
    rows = []
    for spec in SEARCHED:
        by_task = {t: seeds for t in tasks
                   if (seeds := {seed: r["readouts"] for seed, r in runs.get((t, spec), {}).items() if r["readouts"]})}
        rows += [[LABELS[spec], *row, str(len(by_task))] for row in compare_seeds.across_tasks(by_task)]
    return rows


def nearest_uniform(runs, task: str, spec: str) -> str | None:
    """The uniform arm whose mean trainable-parameter count is nearest this arm's on this task."""
    def mean_params(s):
        return statistics.fmean(r["params"] for r in runs[(task, s)].values())
    present = [u for u in UNIFORM if runs.get((task, u))]
    if not present or not runs.get((task, spec)):
        return None
    return min(present, key=lambda u: abs(mean_params(u) - mean_params(spec)))


def paired(runs, tasks, spec: str) -> dict:
    """Differences spec - nearest uniform arm, paired by task and seed; Wilcoxon over all pairs, t per task."""
    diffs, per_task = [], {}
    for task in tasks:
        other = nearest_uniform(runs, task, spec)
        if other is None or other == spec:
            continue
        seeds = sorted(set(runs[(task, spec)]) & set(runs[(task, other)]))
        d = [runs[(task, spec)][s]["score"] - runs[(task, other)][s]["score"] for s in seeds]
        diffs += d
        t_p = float(stats.ttest_1samp(d, 0).pvalue) if len(d) >= 2 and np.std(d) > 0 else None
        per_task[task] = {"against": other, "mean_diff": float(np.mean(d)) if d else None, "t_p": t_p, "n": len(d)}
    w_p = float(stats.wilcoxon(diffs).pvalue) if len(diffs) >= 2 and any(diffs) else None
    return {"per_task": per_task, "n": len(diffs), "mean_diff": float(np.mean(diffs)) if diffs else None,
            "wilcoxon_p": w_p}


def fmt(values, scale=100.0) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}" if len(values) > 1 else f"{mean:.1f}"


def write(root: Path, out: Path, name: str, device: str, command: str, notes: str = "") -> Path:
    """results/NAME.md from ROOT's finished runs; `notes` (markdown: what ran, deviations from the protocol, the
    reading) goes under the provenance lines, so that a regenerated page keeps them."""
    runs = read_finals(root)
    selection = read_json(root / "selection.json", ReportError) if (root / "selection.json").exists() else {}
    tasks = [t for t in ("rte", "mrpc", "stsb", "cola") if any(k[0] == t for k in runs)]
    specs = [s for s in LABELS if any(k[1] == s for k in runs)]
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    lines = [f"# {name}: AutoLoRA against tuned baselines on MPNet-base (GLUE dev)", "",
             f"- command: `{command}`", f"- commit: {git_commit()}", f"- device: {device}",
             f"- date: {dt.date.today().isoformat()}",
             f"- protocol: results/{name}_protocol.md (written before the runs); seeds {seeds}", "",
             *([notes.strip(), ""] if notes.strip() else []),
             "## Main metric on GLUE dev, mean ± std over seeds (×100)", ""]
    header = ["arm", *[t.upper() for t in tasks], "avg", "trainable params (RTE)", "seeds"]
    rows = []
    for spec in specs:
        cells = [fmt([r["score"] for r in runs.get((t, spec), {}).values()]) for t in tasks]
        complete = [t for t in tasks if runs.get((t, spec))]
        avg = (statistics.fmean(statistics.fmean(r["score"] for r in runs[(t, spec)].values()) for t in complete)
               * 100 if len(complete) == len(tasks) else None)
        params = [r["params"] for r in runs.get(("rte", spec), {}).values()]
        rows.append([LABELS[spec], *cells, "–" if avg is None else f"{avg:.1f}",
                     f"{statistics.fmean(params):,.0f}" if params else "–",
                     "/".join(str(len(runs.get((t, spec), {}))) for t in tasks)])
    for label, scores in PAPER.items():
        rows.append([label, *[f"{scores[t]:.1f}" for t in tasks], f"{statistics.fmean(scores[t] for t in tasks):.1f}",
                     "–", "–"])
    lines += [markdown_table(header, rows), "",
              "Trainable parameters include the new classifier head (MPNet's: 592k for 2 labels), trained in full by "
              "every arm; per task counts differ by the head only. AutoLoRA's paper reports its GLUE average over "
              "eight tasks only (85.5 on RoBERTa-base), so no per-task row of it is printed.", "",
              "## Paired tests (the protocol's decision)", ""]
    test_rows = []
    for spec in specs:
        if spec in UNIFORM:
            continue
        result = paired(runs, tasks, spec)
        per = "; ".join(f"{t.upper()} vs {LABELS[p['against']]}: {p['mean_diff'] * 100:+.2f}"
                        + ("" if p["t_p"] is None else f" (t p={p['t_p']:.2f})") for t, p in result["per_task"].items())
        test_rows.append([LABELS[spec], result["n"], "–" if result["mean_diff"] is None else
                          f"{result['mean_diff'] * 100:+.2f}",
                          "–" if result["wilcoxon_p"] is None else f"{result['wilcoxon_p']:.3f}", per])
    lines += [markdown_table(["arm", "pairs", "mean diff (×100)", "Wilcoxon p", "per task vs nearest uniform"],
                             test_rows), "",
              "## Learning rates chosen on held-out train (selection.json)", ""]
    sel_rows = []
    for spec in specs:
        cells = []
        for t in tasks:
            pick = next((v for k, v in selection.items() if k.endswith(f"_{t}/{spec}")), None)
            cells.append("–" if pick is None or pick["chosen"] is None else
                         f"{pick['chosen']} (" + ", ".join(
                             f"{lr}: {'–' if s is None else f'{s * 100:.1f}'}" for lr, s in pick["scores"].items())
                         + ")")
        sel_rows.append([LABELS[spec], *cells])
    lines += [markdown_table(["arm", *[t.upper() for t in tasks]], sel_rows), "",
              "## Cost: GPU seconds per run (search + retrain), mean over seeds", "",
              "Runs shared the GPU (several at once), so seconds compare within this table only.", ""]
    cost_rows = []
    for t in tasks:
        mean_cost = {s: statistics.fmean(r["gpu_s"] for r in runs[(t, s)].values()) for s in specs if runs.get((t, s))}
        grid = sum(mean_cost.get(u, 0.0) for u in UNIFORM)
        cost_rows.append([t.upper(), *[f"{mean_cost[s]:.0f}" if s in mean_cost else "–" for s in specs], f"{grid:.0f}"])
    lines += [markdown_table(["task", *[LABELS[s] for s in specs], "rank grid r=2+4+8"], cost_rows), "",
              "## The searched ranks across seeds", ""]
    agree_rows, figures_png = [], {}
    for t in tasks:
        groups = []
        for spec in (s for s in SEARCHED if runs.get((t, s))):
            by_seed = sorted(runs[(t, spec)].items())
            groups.append((LABELS[spec], [(seed, r["ranks"]) for seed, r in by_seed]))
            names = sorted(by_seed[0][1]["ranks"])
            table = np.array([[r["ranks"][n] for n in names] for _, r in by_seed])
            if len(by_seed) >= 2:
                a = agreement.seed_agreement(table, None)
                agree_rows.append([t.upper(), LABELS[spec], f"{table.mean():.2f}", f"{a['pair_agreement']:.2f}",
                                   f"{a['chance_agreement']:.2f}",
                                   "–" if a["rank_spearman"] is None else f"{a['rank_spearman']:.2f}",
                                   "–" if a["rank_spearman_p"] is None else f"{a['rank_spearman_p']:.3f}"])
        if groups:
            fig = figures.ranks_by_seed(groups, 8, f"{name} {t.upper()}: searched ranks")
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=120)
            figures_png[f"figures/{name}_ranks_{t}.png"] = buffer.getvalue()
            lines.append(f"![{t} ranks](figures/{name}_ranks_{t}.png)")
    lines += ["", markdown_table(["task", "arm", "mean rank", "pair agreement", "chance", "Spearman rho",
                                  "permutation p"], agree_rows), ""]
    if rows := readout_rows(runs, tasks):
        lines += ["## Every readout of the same searches, across seeds", "",
                  "Each search's ranks.json holds the ranks of every readout (search.readout) and ΔW's singular "
                  "values; the retrain used the arm's own readout. Spearman rho between seeds over the matrices, "
                  "mean over seed pairs; permutation p: the matrices' labels shuffled within each seed. Searches "
                  "whose ranks.json predates the readouts are left out.", "",
                  markdown_table(["task", "arm", "readout", "mean rank", "Spearman rho", "permutation p"], rows), ""]
    if rows := across_task_rows(runs, tasks):
        lines += ["The same readouts between seeds of one task and between seeds of different tasks:", "",
                  markdown_table(["arm", "readout", "rho, same task", "rho, different tasks", "tasks"], rows), ""]
    # the page and its figures go through the report's owned writer: never over a file this program did not write
    written = write_owned(out, {f"{name}.md": "\n".join(lines) + "\n", **figures_png}, OWNED, ReportError)
    return written[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--name", default="glue_base")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--device", default=None, help="default: ROOT/report.json's (written by reproduce)")
    parser.add_argument("--command", default=None, help="default: ROOT/report.json's")
    parser.add_argument("--notes", type=Path, default=None, help="markdown file put under the provenance lines")
    args = parser.parse_args(argv)
    try:
        print(write(args.root, args.out, args.name, *provenance(args), notes_text(args.notes)))
    except ReportError as err:
        print(f"protocol_table: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def provenance(args: argparse.Namespace) -> tuple[str, str]:
    """(device, command): the flags', else ROOT/report.json's (written by reproduce); a ReportError names what
    is missing or unreadable."""
    if not args.root.is_dir():
        raise ReportError(f"{args.root}: not a folder")
    report = args.root / "report.json"
    recorded = read_json(report, ReportError) if report.exists() else {}
    recorded = recorded if isinstance(recorded, dict) else {}
    device, command = args.device or recorded.get("device"), args.command or recorded.get("command")
    if not device or not command:
        raise ReportError(f"{report} records no device or command; pass --device and --command")
    return str(device), str(command)


def notes_text(notes: Path | None) -> str:
    return read_text(notes, ReportError) if notes else ""


if __name__ == "__main__":
    main()
