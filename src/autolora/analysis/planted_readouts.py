"""Every rank readout on the planted teacher (issue #31): the paper's gates, the released rule, the ΔW readouts
(energy, budget) and the oracle, under the per-matrix softmax and the global softmax, from the same searches.

``python -m autolora.analysis.planted_readouts`` runs analysis/planted.py's runs for each alpha_norm (one search
gives every readout) and writes the "Readouts on the planted teacher" section of results/search_signal.md and
results/search_signal_readouts.csv.
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wilcoxon

from autolora.analysis import planted
from autolora.analysis.planted_report import cpu_name, pm
from autolora.analysis.tables import markdown_table, replace_section
from autolora.files import write_text

SECTION = "## Readouts on the planted teacher (issue #31)"
READOUTS = ("gates", "released", "energy", "budget", "svd")
LABELS = {"gates": "gates (paper)", "released": "released", "energy": "ΔW energy 90%", "budget": "ΔW global budget",
          "svd": "oracle (knows s)"}


def components(record: dict, readout: str) -> float:
    """The number of LoRA components (ranks summed over the 8 matrices) a readout retrains; NaN for the oracle."""
    if readout == "svd":
        return math.nan
    return float(sum(int(x) for x in record[f"{readout}/ranks"].split()))


def variant(record: dict) -> tuple:
    """The search variant a record ran: alpha_norm, eta, alpha lr, alpha warm-up, alpha averaging, D_val rows
    per alpha step (records from before that option: the study's batch of 16)."""
    return (record["alpha_norm"], record["eta"], record["alpha_lr"], record.get("alpha_warmup", 0.0),
            record.get("alpha_average", 0.0), int(record.get("val_batch_size") or planted.Study().batch_size))


def table(records: list[dict]) -> str:
    """One row per (alpha_norm, eta, setting) and readout: rho, exact, MAE, 0->0, components retrained."""
    key = lambda r: (*variant(r), r["control"], r["strength"], r["n_train"], r["steps"])  # noqa: E731
    header = ["alpha_norm", "eta", "α lr", "α warm-up", "α avg", "val batch", "s", "D_tr", "steps", "readout", "ρ",
              "exact /8", "MAE", "0→0", "components"]
    lines = []
    for group_key in sorted({key(r) for r in records}):
        group = [r for r in records if key(r) == group_key]
        norm, eta, alpha_lr, warmup, average, val_batch, control, strength, n, steps = group_key
        for readout in READOUTS:
            if control and readout == "svd":
                continue
            rho = [r[f"{readout}/spearman"] for r in group]
            const = sum(not math.isfinite(x) for x in rho)
            zeros = sum(r[f"{readout}/zeros_hit"] for r in group)
            zeros_total = sum(r[f"{readout}/zeros_total"] for r in group)
            lines.append([norm, f"{eta:g}", f"{alpha_lr:g}", f"{warmup:g}", f"{average:g}", str(val_batch),
                          "control" if control else f"{strength:g}", str(n), str(steps),
                          LABELS[readout], pm(planted.mean_std(rho), signed=True) + (f" ({const} const.)" if const
                                                                                     else ""),
                          pm(planted.mean_std([r[f"{readout}/exact"] for r in group]), 1),
                          pm(planted.mean_std([r[f"{readout}/mae"] for r in group])),
                          "—" if readout == "svd" else f"{zeros:.0f}/{zeros_total:.0f}",
                          "—" if readout == "svd" else pm(planted.mean_std([components(r, readout) for r in group]),
                                                          1)])
    return markdown_table(header, lines)


def pooled_lines(records: list[dict]) -> list[str]:
    """Per alpha_norm and eta, pooled over the planted runs: each readout's rho, its paired Wilcoxon p against the
    gates readout, exact matches and planted-0 matrices given 0."""
    lines = []
    for norm, eta, alpha_lr, warmup, average, val_batch in sorted({variant(r) for r in records}):
        same = [r for r in records if variant(r) == (norm, eta, alpha_lr, warmup, average, val_batch)]
        runs, control = [r for r in same if not r["control"]], [r for r in same if r["control"]]
        parts = []
        for readout in READOUTS:
            rho = np.array([r[f"{readout}/spearman"] for r in runs], dtype=float)
            gates = np.array([r["gates/spearman"] for r in runs], dtype=float)
            both = np.isfinite(rho) & np.isfinite(gates)
            p = math.nan
            if readout != "gates" and both.sum() > 1 and np.any(rho[both] != gates[both]):
                p = float(wilcoxon(rho[both] - gates[both], alternative="greater").pvalue)
            exact = sum(r[f"{readout}/exact"] for r in runs)
            zeros = sum(r[f"{readout}/zeros_hit"] for r in runs)
            zeros_total = sum(r[f"{readout}/zeros_total"] for r in runs)
            chance = planted.mean_std([r[f"{readout}/spearman"] for r in control])
            parts.append(f"{LABELS[readout]} ρ {pm(planted.mean_std(rho), signed=True)}"
                         + (f" (> gates: p {p:.2g})" if math.isfinite(p) else "")
                         + f", exact {exact}/{8 * len(runs)}"
                         + ("" if readout == "svd" else f", 0→0 {zeros}/{zeros_total}, control ρ "
                            f"{pm(chance, signed=True)}"))
        lines.append(f"alpha_norm={norm}, eta={eta:g}, alpha_lr={alpha_lr:g}, alpha_warmup={warmup:g}, "
                     f"alpha_average={average:g}, val_batch_size={val_batch}, "
                     f"{len(runs)} planted runs: "
                     + "; ".join(parts) + ".")
    return lines


def section(records: list[dict], args, seconds: float, commit_id: str) -> str:
    cpu = sum(r["cpu_s"] for r in records) / 60
    return "\n".join([
        SECTION, "",
        f"- command: `nice python -m autolora.analysis.planted_readouts {' '.join(args.argv)}`",
        f"- commit: {commit_id} (at the start of the runs)",
        f"- device: CPU, {cpu_name()}, {args.workers} processes x 1 thread (nice); torch {torch.__version__}",
        f"- date: {datetime.date.today().isoformat()}; {seconds / 60:.1f} min wall, {cpu:.1f} CPU-min summed, "
        f"{len(records)} runs", "",
        "The planted teacher of the section above (same backbone, planted ranks, data and search recipe); each run's "
        "one search gives every readout. energy: per matrix the fewest components of the learned update ΔW = scale "
        "· B diag(gate) A holding 90% of ‖ΔW‖_F²; budget: ΔW's singular values ranked across the 8 matrices (σ² per "
        "parameter), taken until the gates readout's parameter count is spent (equal parameters; rank 0 possible). "
        "global_softmax: one softmax across all 64 components, x 8 (mean gate 1/k), threshold 1/k. components: "
        "ranks summed over the 8 matrices (planted: 14). Control: nothing planted, scored against the planted "
        "pattern (chance).", "",
        table(records), "",
        "Pooled over the planted runs (one-sided paired Wilcoxon p that the readout's per-run ρ exceed the gates "
        "readout's):", "",
        *[f"- {line}" for line in pooled_lines(records)], "",
    ])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m autolora.analysis.planted_readouts",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--alpha-norms", nargs="+", default=["softmax", "global_softmax"],
                        choices=["softmax", "global_softmax", "sparsemax"])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 1.0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--etas", type=float, nargs="+", default=[None], help="look-ahead step(s); default lr")
    parser.add_argument("--alpha-lrs", type=float, nargs="+", default=[None],
                        help="alpha's learning rate(s) (under Adam: a softmax temperature 1/x); default the study's")
    parser.add_argument("--alpha-warmups", type=float, nargs="+", default=[0.0],
                        help="share(s) of the search's steps before alpha moves (search.alpha_warmup)")
    parser.add_argument("--alpha-averages", type=float, nargs="+", default=[0.0],
                        help="share(s) of the last steps whose alpha is averaged (search.alpha_average)")
    parser.add_argument("--val-batch-sizes", type=int, nargs="+", default=[None],
                        help="D_val rows per alpha step (search.val_batch_size); default the study's batch")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    return args


def main(argv=None) -> None:
    from autolora.analysis.planted_report import commit

    args = parse_args(argv)
    commit_id, began, records = commit(), time.time(), []
    settings = planted.sweep_settings(args.strengths, args.sizes, args.budgets, args.seeds)
    for norm in args.alpha_norms:
        for eta in args.etas:
            for alpha_lr, warmup, average, val_batch in [(a, w, m, v) for a in args.alpha_lrs
                                                         for w in args.alpha_warmups for m in args.alpha_averages
                                                         for v in args.val_batch_sizes]:
                study = replace(planted.Study(), alpha_norm=norm, eta=eta, alpha_warmup=warmup, alpha_average=average,
                                val_batch_size=val_batch, **({} if alpha_lr is None else {"alpha_lr": alpha_lr}))
                for record in planted.run_sweep(study, settings, args.workers):
                    records.append({"alpha_norm": norm, "eta": study.lr if eta is None else eta,
                                    "alpha_lr": study.alpha_lr, "alpha_warmup": warmup, "alpha_average": average,
                                    "val_batch_size": study.val_batch_size or study.batch_size,
                                    **record})
    seconds = time.time() - began
    planted.write_csv(args.out / "search_signal_readouts.csv", records)
    path = args.out / "search_signal.md"
    existing = path.read_text() if path.exists() else "# Does the search carry a signal? (issue #27)\n"
    write_text(path, replace_section(existing, SECTION, section(records, args, seconds, commit_id)))


if __name__ == "__main__":
    main()
