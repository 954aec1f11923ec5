"""The planted-teacher study's write-up (analysis/planted.py runs it): the "Planted-teacher rank recovery" section of
results/search_signal.md and its figure, every number read from the sweep's records.

Only this section of search_signal.md is replaced; other sections (later parts of issue #27) stay as they are.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu, wilcoxon

from autolora.analysis.figures import plt
from autolora.analysis.planted import mean_std
from autolora.analysis.tables import markdown_table, replace_section
from autolora.files import write_text

SECTION = "## Planted-teacher rank recovery"
TITLE = "# Does the search carry a signal? (issue #27)\n\n"  # of a new search_signal.md
FIGURE = "figures/search_signal_planted.png"
COMMAND = "python -m autolora.analysis.planted"
LABELS = {"gates": "gates (paper)", "released": "released", "svd": "oracle: learned update"}
READOUT_ORDER = ("gates", "released", "svd")


def commit() -> str:
    """Short HEAD, with 'plus uncommitted changes' when the tree is dirty."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" plus uncommitted changes" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    """lscpu's model name (platform's processor where lscpu is absent)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    found = re.search(r"^Model name:\s*(.+)$", text, flags=re.M)
    return found.group(1).strip() if found else platform.machine()


def pm(value: tuple[float, float], digits: int = 2, signed: bool = False) -> str:
    """'mean ± std', '—' where undefined."""
    mean, std = value
    if not math.isfinite(mean):
        return "—"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}" if signed else f"{mean:.{digits}f} ± {std:.{digits}f}"


def rho_cell(row: dict, readout: str) -> str:
    """rho's mean ± std, with the number of seeds where it was undefined (constant found ranks)."""
    if not math.isfinite(row[f"{readout}/mae"][0]):
        return "—"  # the readout is not defined here (the oracle in the control)
    const = row[f"{readout}/const"]
    return pm(row[f"{readout}/spearman"], signed=True) + (f" ({const} const.)" if const else "")


def setting_cells(row: dict) -> list[str]:
    return ["control (none)" if row["control"] else f"{row['strength']:g}", str(row["n_train"]), str(row["steps"])]


def above_control(records: list[dict], row: dict, readout: str) -> float:
    """One-sided Mann-Whitney p that this setting's per-seed rho exceeds the pooled control's (NaN if either is
    empty or the setting is the control)."""
    control = pooled(records, f"{readout}/spearman", True)
    mine = pooled(setting_records(records, row), f"{readout}/spearman", False)
    if row["control"] or not control.size or not mine.size:
        return math.nan
    return float(mannwhitneyu(mine, control, alternative="greater").pvalue)


def setting_records(records: list[dict], row: dict) -> list[dict]:
    keys = ("control", "strength", "n_train", "steps")
    return [r for r in records if all(r[key] == row[key] for key in keys)]


def p_cell(p: float) -> str:
    return "—" if not math.isfinite(p) else f"{p:.3f}"


def recovery_table(records: list[dict], rows: list[dict]) -> str:
    """Gates and released readouts: rho and its p against the control, exact matches of 8, mean |error|,
    rank-0 matrices given 0."""
    header = ["s", "D_tr", "steps"] + [f"{LABELS[r]}: {m}" for r in ("gates", "released")
                                       for m in ("ρ", "p vs control", "exact /8", "MAE", "0→0")]
    lines = [setting_cells(row) + [cell for r in ("gates", "released") for cell in (
        rho_cell(row, r), p_cell(above_control(records, row, r)), pm(row[f"{r}/exact"], 1), pm(row[f"{r}/mae"]),
        f"{row[f'{r}/zeros_hit'][0] * row['seeds']:.0f}/{row[f'{r}/zeros_total'][0] * row['seeds']:.0f}")]
             for row in rows]
    return markdown_table(header, lines)


def diagnostic_table(rows: list[dict]) -> str:
    """How well the student fitted the teacher, and the oracle readout of what it learned."""
    header = ["s", "D_tr", "steps", "val MSE / start", "mean rank (gates)", "oracle ρ", "oracle MAE",
              "oracle mean"]
    lines = [setting_cells(row) + [pm(row["val_ratio"], 3), pm(row["gates/mean_rank"]), rho_cell(row, "svd"),
                                   pm(row["svd/mae"]), pm(row["svd/mean_rank"])] for row in rows]
    return markdown_table(header, lines)


def pooled(records: list[dict], key: str, control: bool) -> np.ndarray:
    values = np.array([r[key] for r in records if r["control"] == control], dtype=float)
    return values[np.isfinite(values)]


def verdict(records: list[dict], planted: list[dict]) -> str:
    """Which settings' per-seed rho (gates) lie above the control's: the plain answer to the study's question."""
    control = pooled(records, "gates/spearman", True)
    p_values = {id(row): above_control(records, row, "gates") for row in planted}
    above = [row for row in planted if p_values[id(row)] < 0.05]
    if not above:
        return ("**The search does not recover the planted ranks at any setting**: no setting's per-seed ρ (gates) "
                f"is distinguishable from the {control.size} control runs' (one-sided Mann-Whitney p < 0.05).")
    corrected = sum(p_values[id(row)] < 0.05 / len(planted) for row in above)
    return (f"{len(above)} of {len(planted)} settings have per-seed ρ (gates) above the control's (one-sided "
            f"Mann-Whitney p < 0.05; about {0.05 * len(planted):.1f} would by chance): " +
            ", ".join(f"s={r['strength']:g}/D_tr={r['n_train']}/{r['steps']} steps "
                      f"(ρ {r['gates/spearman'][0]:+.2f}, p {p_values[id(r)]:.3f})" for r in above) +
            f"; {corrected} survive{'s' if corrected == 1 else ''} a Bonferroni correction "
            f"(p < 0.05/{len(planted)}).")


def learned_line(records: list[dict], planted: list[dict]) -> str:
    """Where the student did learn the planted structure (oracle mean rho >= 0.8), what the gates show of it."""
    learned = [row for row in planted if row["svd/spearman"][0] >= 0.8]
    if not learned:
        return "No setting reached an oracle mean ρ of 0.8: the student never clearly learned the planted structure."
    runs = [r for row in learned for r in setting_records(records, row)]
    pairs = [(r["svd/spearman"], r["gates/spearman"]) for r in runs if math.isfinite(r["gates/spearman"])]
    p = float(wilcoxon([o - g for o, g in pairs], alternative="greater").pvalue) if len(pairs) > 1 else math.nan
    names = ", ".join(f"s={r['strength']:g}/D_tr={r['n_train']}/{r['steps']}" for r in learned)
    return (f"Where the student learned the planted structure (oracle mean ρ ≥ 0.8: {names}; {len(runs)} runs), its "
            f"learned updates give ρ {pm(mean_std([r['svd/spearman'] for r in runs]), signed=True)}, its gates "
            f"{pm(mean_std([r['gates/spearman'] for r in runs]), signed=True)} and the released readout "
            f"{pm(mean_std([r['released/spearman'] for r in runs]), signed=True)} (paired one-sided Wilcoxon, "
            f"learned update > gates: p = {p:.3g}). " + (
                "The gates read out much less of the structure than the student learned." if p < 0.05 else
                "The gates read out about as much as the student learned."))


def collapse_line(records: list[dict]) -> str:
    """The mean found rank (gates) by search length, planted and control: does it follow what was planted?"""
    budgets = sorted({r["steps"] for r in records})
    parts = []
    for steps in budgets:
        planted = [r["gates/mean_rank"] for r in records if r["steps"] == steps and not r["control"]]
        control = [r["gates/mean_rank"] for r in records if r["steps"] == steps and r["control"]]
        parts.append(f"{steps} steps: {pm(mean_std(planted))} planted, {pm(mean_std(control))} control")
    ones = sum(all(x == "1" for x in r["gates/ranks"].split()) for r in records if r["control"])
    total = sum(r["control"] for r in records)
    planted_mean = float(np.mean([int(x) for x in records[0]["reference"].split()]))
    means = [mean_std([r["gates/mean_rank"] for r in records if r["steps"] == t and r["control"]])[0]
             for t in budgets]
    shrinks = len(means) > 1 and means[-1] < means[0]
    return (f"Mean found rank (gates) by search length: {'; '.join(parts)} (the planted mean is {planted_mean:g}). "
            + ("Longer searches concentrate each matrix's gates on fewer components whether or not anything was "
               "planted: " if shrinks else "") + f"{ones} of {total} control runs end with rank 1 in every matrix.")


def findings(records: list[dict], rows: list[dict], k: int) -> list[str]:
    """The plain statements, each computed: which settings beat the control, chance, the oracle, rank 0."""
    control = pooled(records, "gates/spearman", True)
    planted = [row for row in rows if not row["control"]]
    best = max(planted, key=lambda row: row["gates/spearman"][0] if math.isfinite(row["gates/spearman"][0]) else -9)
    strengths = sorted({row["strength"] for row in planted})
    by_strength = {s: pooled([r for r in records if r["strength"] == s], "gates/spearman", False) for s in strengths}
    zeros = {r: sum(rec[f"{r}/zeros_hit"] for rec in records if not rec["control"]) for r in ("gates", "released")}
    zeros_total = sum(rec["gates/zeros_total"] for rec in records if not rec["control"])
    lowest = min(int(x) for rec in records for x in rec["gates/ranks"].split())
    oracle = pooled(records, "svd/spearman", False)
    oracle_p = float(wilcoxon(oracle, alternative="greater").pvalue) if oracle.size > 1 else math.nan
    oracle_by = {s: pooled([r for r in records if r["strength"] == s], "svd/spearman", False) for s in strengths}
    return [
        verdict(records, planted),
        f"Chance, from the control (nothing planted, ρ against the pattern the other runs plant): ρ (gates) "
        f"{pm(mean_std(control), signed=True)} over the {control.size} control runs where it is defined. Best "
        f"setting: s={best['strength']:g}, D_tr={best['n_train']}, {best['steps']} steps, ρ "
        f"{pm(best['gates/spearman'], signed=True)}, {best['gates/exact'][0]:.1f} of 8 exact.",
        "Mean ρ (gates) by signal strength, pooled over sizes, budgets and seeds: " + ", ".join(
            f"s={s:g}: {pm(mean_std(v), signed=True)}" for s, v in by_strength.items()) + ".",
        f"Oracle readout (the student's learned update, nuclear norm / planted singular value; knows s): ρ "
        f"{pm(mean_std(oracle), signed=True)} over {oracle.size} runs with planted ranks (one-sided Wilcoxon "
        f"p = {oracle_p:.3g} that it exceeds 0; by strength: " + ", ".join(
            f"s={s:g}: {pm(mean_std(v), signed=True)}" for s, v in oracle_by.items()) + "). "
        + ("The fitted student does not carry the planted per-matrix structure measurably either: the ranks are "
           "not recoverable from this data by any readout of this student, whatever the gates do."
           if not oracle_p < 0.05 else "The information is in the data, and the student's updates carry it."),
        learned_line(records, planted),
        collapse_line(records),
        f"Rank 0: the gates readout gave {zeros['gates']} and the released readout {zeros['released']} of the "
        f"{zeros_total} planted-0 matrices rank 0 (lowest rank the gates readout gave any matrix in any run: "
        f"{lowest}). Neither can: softmax gates sum to 1, so the largest of the k={k} is ≥ 1/k, the threshold; the "
        "released rule keeps every component ≥ the mean of alpha, and the largest always is.",
    ]


def figure(records: list[dict], rows: list[dict]) -> plt.Figure:
    """(a) mean rho vs signal strength per size/budget, gates against the oracle, with the control band; (b) found
    vs planted at the setting where the student learned the planted structure best (highest oracle rho)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.6))
    mean, std = mean_std(pooled(records, "gates/spearman", True))
    left.axhspan(mean - std, mean + std, color="0.85", label="control, gates (mean ± std)")
    planted = [row for row in rows if not row["control"]]
    combos = sorted({(row["n_train"], row["steps"]) for row in planted})
    for index, (n, steps) in enumerate(combos):
        line = sorted((row for row in planted if (row["n_train"], row["steps"]) == (n, steps)),
                      key=lambda row: row["strength"])
        xs = [row["strength"] for row in line]
        for readout, style in (("gates", "-o"), ("svd", ":^")):
            left.plot(xs, [row[f"{readout}/spearman"][0] for row in line], style, color=f"C{index}",
                      label=f"D_tr={n}, {steps} steps: {LABELS[readout]}")
    strengths = sorted({row["strength"] for row in planted})
    left.set(xscale="log", xlabel="signal strength s (planted σ / ‖W‖₂)", ylabel="Spearman ρ, found vs planted",
             title="(a) recovery vs signal (mean over seeds)", ylim=(-1.05, 1.05))
    left.set_xticks(strengths, [f"{s:g}" for s in strengths])
    left.minorticks_off()
    left.axhline(0, color="k", lw=0.5)
    left.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    top = max(planted, key=lambda row: row["svd/spearman"][0])
    chosen = setting_records(records, top)
    jitter = np.random.default_rng(0)
    for offset, readout in zip((-0.2, 0.0, 0.2), READOUT_ORDER, strict=True):
        truth = np.concatenate([np.array(r["planted"].split(), dtype=float) for r in chosen])
        found = np.concatenate([np.array(r[f"{readout}/ranks"].split(), dtype=float) for r in chosen])
        lift = 0.0 if readout == "svd" else jitter.uniform(-0.1, 0.1, found.size)  # integer ranks overlap
        right.scatter(truth + offset + jitter.uniform(-0.05, 0.05, truth.size), found + lift, s=14, alpha=0.7,
                      label=LABELS[readout])
    right.plot([0, 8], [0, 8], color="k", lw=0.6, label="found = planted")
    right.set(xlabel="planted rank", ylabel="found rank (jittered)", xticks=range(0, 9),
              title=f"(b) s={top['strength']:g}, D_tr={top['n_train']}, {top['steps']} steps, {len(chosen)} seeds\n"
                    "(the setting with the highest oracle ρ)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def timing(records: list[dict], seconds: float, workers: int) -> str:
    """Wall time, the runs' summed CPU time, and the load at the end: a load above the worker count means other
    jobs shared the cores, which stretches the wall time but not the CPU time."""
    cpu = sum(r.get("cpu_s", 0.0) for r in records)
    load = os.getloadavg()[2] if hasattr(os, "getloadavg") else math.nan
    shared = load > workers + 0.5
    return (f"the sweep took {seconds / 60:.1f} min wall for {len(records)} runs, {cpu / 60:.1f} CPU-min summed over "
            f"the runs; 15-min load average at the end {load:.1f} on {os.cpu_count()} cores"
            + (" (other jobs shared the cores: the wall time is stretched)" if shared else ""))


def section(study, records: list[dict], rows: list[dict], seconds: float, workers: int, commit_id: str) -> str:
    """The whole markdown section."""
    threads = f"{workers} process{'es' if workers > 1 else ''} x 1 thread" if workers > 1 else \
        f"1 process x {torch.get_num_threads()} threads"
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in records}))
    order = sorted(rows, key=lambda row: (row["control"], row["strength"], row["n_train"], row["steps"]))
    planted_rows = "query ranks per layer (0, 1, 2, 4), value ranks (4, 2, 1, 0)"
    parts = [
        SECTION, "",
        f"- command: `{COMMAND}` (defaults; writes this section, `results/{FIGURE}` and "
        "`results/search_signal_planted.csv`, one row per run)",
        f"- commit: {commit_id} (at the start of the sweep)",
        f"- device: CPU, {cpu_name()}, {threads}; torch {torch.__version__}",
        f"- date: {datetime.date.today().isoformat()}; {timing(records, seconds, workers)}", "",
        f"Backbone: random-init BERT ({study.layers} layers, hidden {study.hidden}, {study.heads} heads, intermediate "
        f"{study.intermediate}, vocab {study.vocab}, initializer_range {study.init_range}), frozen, seeded per run. "
        f"Teacher: the backbone with W += s · ‖W‖₂ · U Vᵀ (U, V random orthonormal) on {planted_rows}. Data: random "
        f"token sequences of length {study.seq_len}; target = the teacher's last hidden state plus Gaussian noise "
        f"of {study.noise:g} x its std; |D_val| = |D_tr|. Student: the backbone with the search layers on every "
        f"query and value (k={study.k}, {study.alpha_norm}), searched by `method.search.search` (fd forward, "
        f"eta = lr = {study.lr:g}, alpha lr {study.alpha_lr:g}, batch {study.batch_size}, warmup 0.06, no dropout), "
        f"loss MSE. Seeds {seeds} per setting (each seed draws its own backbone, planted directions, data and "
        "LoRA init). "
        "ρ: Spearman over the 8 matrices (undefined, left out of the mean and counted as const., where the found "
        "ranks are all equal); exact: matrices whose found rank equals the planted one; MAE: mean |found − "
        "planted|; 0→0: planted-0 matrices given rank 0, over all seeds. The control plants nothing (teacher = "
        "backbone; its ranks are all 0) and is scored against the pattern the other runs plant: what chance gives.",
        "", "### Recovery (mean ± std over seeds)", "",
        "p vs control: one-sided Mann-Whitney test that the setting's per-seed ρ exceed the pooled control runs' ρ.",
        "", recovery_table(records, order), "",
        "### Fit and the oracle readout", "",
        "val MSE / start: the student's validation MSE after the search over the backbone's (LoRA at zero). Oracle: "
        "per matrix the nuclear norm of the learned update scale · B diag(gate) A over s · ‖W‖₂ (equals the planted "
        "rank if the student learned exactly the planted update; not defined for the control).", "",
        diagnostic_table(order), "",
        f"![found vs planted ranks, recovery vs signal]({FIGURE})", "",
        "### What it shows", "", *[f"- {line}" for line in findings(records, rows, study.k)], "",
    ]
    return "\n".join(parts)


def write(out: Path, study, records: list[dict], rows: list[dict], seconds: float, workers: int,
          commit_id: str | None = None) -> None:
    """Write the section into out/search_signal.md and the figure into out/figures/."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig = figure(records, rows)
    fig.savefig(out / FIGURE, dpi=130)
    plt.close(fig)
    path = out / "search_signal.md"
    existing = path.read_text() if path.exists() else ""
    text = section(study, records, rows, seconds, workers, commit_id or commit())
    write_text(path, replace_section(existing, SECTION, text, title=TITLE))
