"""`autolora-agree RUN_OR_SWEEP ...`: do searches with different seeds find the same ranks?

One search's noise test (method/noise_test.py) asks whether its α moved consistently; only other seeds can say
whether the data, rather than that seed's random factors, chose the ranks. On MPNet-base the noise test called
the gates' ranks "supported" in 27 of 30 searches whose ranks agreed across seeds at chance (results/glue_base.md).
This reads the ranks.json of finished AutoLoRA runs (run folders, or sweep folders holding them), and prints per
task and readout the seeds' mean Spearman rho over the matrices with its permutation p (analysis.agreement), and,
when the runs span tasks, the same between seeds of different tasks: agreement as high across tasks is the
model's structure, not the task's need.

    autolora-run -m task=glue/rte seed=0,1,2 hydra.sweep.dir=sweeps/rte
    autolora-agree sweeps/rte
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from autolora.analysis import agreement
from autolora.analysis.tables import markdown_table
from autolora.errors import ConfigError, RanksFileError
from autolora.layout import METRICS, RANKS
from autolora.method import ranks as ranks_file

LEVEL = 0.05


def find_runs(folders: list[Path]) -> list[Path]:
    """The finished autolora runs with a ranks.json at or under the folders (each once, in order)."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"agree: {folder}: {'not a folder' if folder.exists() else 'no such folder'}")
        here = [folder] if (folder / RANKS).is_file() else sorted(p.parent for p in folder.rglob(RANKS))
        runs = [run for run in here if (run / METRICS).is_file()]  # finished (a compact copy has no marker)
        if not runs:
            raise ConfigError(f"agree: {folder}: no finished autolora run with a {RANKS} (a search's run folder)")
        found += [run for run in runs if run not in found]
    return found


def read_run(run: Path) -> tuple[str, int, dict[str, dict[str, float]]]:
    """(task, seed, readout -> matrix -> value) of one run; its own retrain's ranks are the readout 'ranks'."""
    payload = ranks_file.load(run / RANKS)
    try:
        metrics = json.loads((run / METRICS).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"agree: {run / METRICS}: not a metrics file autolora-run wrote ({err})") from None
    if not isinstance(metrics, dict):
        raise ConfigError(f"agree: {run / METRICS}: not a metrics file autolora-run wrote (not a JSON object)")
    try:
        seed = int(metrics.get("seed", payload.get("seed", -1)))
        values = {"ranks": {m: float(r) for m, r in payload["ranks"].items()}, **agreement.readout_values(payload)}
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"agree: {run}: its seed, readouts or update_spectra are not what a search writes "
                          f"({err})") from None
    return str(metrics.get("task", payload.get("task"))), seed, values


def collect(runs: list[Path]) -> dict[str, dict[int, dict]]:
    """task -> seed -> readouts; every run must adapt the same matrices and no (task, seed) may come twice."""
    by_task: dict[str, dict[int, dict]] = defaultdict(dict)
    where: dict[tuple[str, int], Path] = {}
    matrices = None
    for run in runs:
        task, seed, values = read_run(run)
        if (task, seed) in where:
            raise ConfigError(f"agree: {run} and {where[(task, seed)]} are both {task} seed {seed} "
                              "(a copied run, or another arm?): name one of them")
        if matrices is None:
            matrices, first = set(values["ranks"]), run
        elif set(values["ranks"]) != matrices:
            raise ConfigError(f"agree: {run / RANKS} adapts other matrices than {first / RANKS}: another model?")
        where[(task, seed)] = run
        by_task[task][seed] = values
    return by_task


def verdict(p: float | None) -> str:
    return "–" if p is None else ("repeat across seeds" if p < LEVEL else "do not repeat")


def within_task(by_task: dict[str, dict[int, dict]]) -> list[list[str]]:
    rows = []
    for task, seeds in by_task.items():
        if len(seeds) < 2:
            continue
        per_seed = [values for _, values in sorted(seeds.items())]
        for readout, _, rho, p in agreement.by_readout(per_seed):
            names = sorted(per_seed[0][readout])
            consensus = agreement.consensus_spearman(np.array([[v[readout][n] for n in names] for v in per_seed]))
            rows.append([task, readout, str(len(seeds)), "–" if rho is None else f"{rho:+.2f}",
                         "–" if p is None else f"{p:.3f}", verdict(p),
                         "–" if consensus is None else f"{consensus:+.2f}"])
    return rows


def across_tasks(by_task: dict[str, dict[int, dict]]) -> list[list[str]]:
    seeds = [(task, values) for task, by_seed in by_task.items() for _, values in sorted(by_seed.items())]
    if len(by_task) < 2:
        return []
    rows = []
    for readout in (r for r in seeds[0][1] if all(r in v for _, v in seeds)):
        names = sorted(seeds[0][1][readout])
        same, other = [], []
        for (task_a, a), (task_b, b) in itertools.combinations(seeds, 2):
            rho = stats.spearmanr([a[readout][n] for n in names], [b[readout][n] for n in names]).statistic
            (same if task_a == task_b else other).append(rho)
        rows.append([readout, "–" if not same else f"{np.nanmean(same):+.2f}", f"{np.nanmean(other):+.2f}"])
    return rows


def report(folders: list[Path]) -> str:
    by_task = collect(find_runs(folders))
    rows = within_task(by_task)
    if not rows:
        raise ConfigError("agree: every task has one seed only: compare at least 2 seeds of a task "
                          "(autolora-run -m seed=0,1,2 ...)")
    lines = ["Spearman rho between seeds over the matrices (mean over seed pairs); permutation p: the matrices' "
             f"labels shuffled within each seed (one-sided, level {LEVEL}). 'ranks' is what each run retrained at. "
             "Consensus: rho between each seed and the mean of the other seeds' values (3+ seeds), what ranks "
             "agreed by several searches would tell about one more.",
             "", markdown_table(["task", "readout", "seeds", "rho", "p", "the values", "consensus rho"], rows)]
    if cross := across_tasks(by_task):
        lines += ["", "Between seeds of the same task and of different tasks (as high across tasks: the model's "
                      "structure, not the task's need):", "",
                  markdown_table(["readout", "rho, same task", "rho, different tasks"], cross)]
    return "\n".join(lines)


def sweep_lines(sweep_dir: Path) -> list[str]:
    """The end of a -m sweep: per task with 2+ seeds of one search, one line saying whether its retrained ranks
    (and ΔW's budget readout) repeat across seeds; nothing where the sweep holds no such set (no search, one
    seed, or several search settings per seed: autolora-agree on each folder tells them apart)."""
    try:
        by_task = collect(find_runs([Path(sweep_dir)]))
    except (ConfigError, RanksFileError, OSError, ValueError, KeyError):  # a summary line must not end the sweep
        return []
    lines = []
    for task, seeds in by_task.items():
        if len(seeds) < 2:
            continue
        found = {row[0]: row[2:] for row in agreement.by_readout([values for _, values in sorted(seeds.items())])}
        rho, p = found["ranks"]
        line = (f"seeds    {task}, {len(seeds)} searches: the ranks {verdict(p)} "
                f"(rho {'–' if rho is None else f'{rho:+.2f}'}, p {'–' if p is None else f'{p:.3f}'})")
        if "budget" in found:
            rho, p = found["budget"]
            line += f"; ΔW budget readout: {verdict(p)} (rho {'–' if rho is None else f'{rho:+.2f}'})"
        lines.append(line + f"; autolora-agree {sweep_dir}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run folders, or sweep folders holding them")
    args = parser.parse_args(argv)
    try:
        print(report(args.folders))
    except (ConfigError, RanksFileError) as err:
        print(str(err), file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
