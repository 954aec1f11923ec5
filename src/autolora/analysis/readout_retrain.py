"""Retrained scores per readout at equal parameters (issue #31): one search per seed, a retrain at each readout's
ranks from that search's ranks.json (search.ranks_readout), and uniform LoRA arms as the parameter neighbours.

    python -m autolora.analysis.readout_retrain FOLDER... [--write results/search_signal.md] [--title HEADING]

FOLDER holds the finished runs of one task, model and retrain budget (any layout). An arm is found by its ranks:
the retrain of readout R at seed s is the run of seed s whose ranks equal R's ranks in seed s's search. Two
readouts that gave one seed the same ranks therefore share that seed's retrain (same ranks, seed and recipe:
the same run), and the table says so. Reads only; writes the table to stdout or into its section of --write.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from autolora.analysis.agreement import seed_agreement
from autolora.analysis.finished_runs import Run, find_runs
from autolora.analysis.tables import print_or_write_section
from autolora.errors import ConfigError
from autolora.layout import RANKS
from autolora.method.readout import READOUTS

SECTION = "## Readouts retrained at equal parameters on MiniLM GLUE (issue #31)"
LABELS = {"gates": "gates (paper)", "released": "released", "energy": "ΔW energy 90%", "budget": "ΔW global budget"}
# Keys that may differ between the arms of one table: how each arm got its ranks, and where its files are.
ARM_KEYS = re.compile(r"^(method|lora\.r|search\.(ranks_file|ranks_readout)|hydra.*|data\.data_dir)$")


@dataclass(frozen=True)
class Arm:
    """One row: a readout's retrains (or a uniform rank's) over the seeds, keyed by seed."""

    label: str
    runs: dict[int, Run]
    shared: dict[int, str]  # seed -> the arm whose run this readout's ranks coincided with, where they did
    ranks: np.ndarray | None  # (seeds, matrices) of the readout, for agreement; None for uniform arms

    def scores(self, seeds: Sequence[int]) -> np.ndarray:
        return np.array([self.runs[s].scores[self.runs[s].main_metric] for s in seeds], dtype=float)

    def params(self, seeds: Sequence[int]) -> np.ndarray:
        return np.array([self.runs[s].trainable_params for s in seeds], dtype=float)


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """The paired difference a - b over seeds: mean, sd, Student's t and its two-sided p (n - 1 df); t and p
    are None when every difference is equal (sd 0, up to rounding) or there is one seed."""
    d = a - b
    sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
    if not sd > 1e-12:  # scores are shares of one dev set: equal differences may differ by a rounding error
        return {"mean": float(d.mean()), "sd": sd, "t": None, "p": None}
    t = float(d.mean() / (sd / math.sqrt(len(d))))
    return {"mean": float(d.mean()), "sd": sd, "t": t, "p": float(2 * stats.t.sf(abs(t), len(d) - 1))}


def nearest_uniform(params: float, uniform: Sequence[Arm], seeds: Sequence[int]) -> Arm:
    """The uniform arm whose mean trainable parameters are closest to params (the smaller on a tie)."""
    return min(uniform, key=lambda arm: (abs(arm.params(seeds).mean() - params), arm.params(seeds).mean()))


def _same_recipe(runs: Sequence[Run]) -> None:
    """Every run shares task, model and every config value but the arm's own keys: else the arms differ in more
    than their ranks and the table would compare recipes. search.* keys are compared between searches only: a
    retrain at a ranks file reads none of them but the file."""
    first = runs[0]
    first_search = next((run for run in runs if run.search_s is not None), None)
    for run in runs[1:]:
        if (run.task, run.model) != (first.task, first.model):
            raise ConfigError(f"{run.path}: task/model {run.task}/{run.model}, but {first.path}: "
                              f"{first.task}/{first.model}; one table holds one task and model")
        for key in sorted(set(run.config) | set(first.config) | set(first_search.config if first_search else ())):
            if ARM_KEYS.match(key):
                continue
            other = first
            if key.startswith("search."):
                if run.search_s is None or first_search is None:
                    continue
                other = first_search
            if run.config.get(key) != other.config.get(key):
                raise ConfigError(f"{run.path}: {key}={run.config.get(key)} but {other.path}: "
                                  f"{key}={other.config.get(key)}; the arms must differ in their ranks only")


def arms_of(runs: Sequence[Run]) -> tuple[list[Arm], list[Arm], list[int]]:
    """(readout arms, uniform arms, seeds) from the runs: a search per seed, the readouts' retrains, LoRA arms.
    A readout is a row where every seed has a run at its ranks; shared names the run it took where that run was
    not the readout's own retrain (another readout's, a uniform arm's)."""
    if not runs:
        raise ConfigError("no finished run found")
    _same_recipe(runs)
    searches = {}
    for run in runs:
        if (run.path / RANKS).is_file() and run.gates is not None:
            if run.seed in searches:
                raise ConfigError(f"two searches for seed {run.seed}: {searches[run.seed].path} and {run.path}")
            searches[run.seed] = run
    if not searches:
        raise ConfigError("no search (a run folder with ranks.json) among the runs")
    seeds = sorted(searches)
    uniform = []  # a uniform rank is a row where every seed of a search has it
    for rank in sorted({int(run.config["lora.r"]) for run in runs if run.method == "lora"}):
        at = {r.seed: r for r in runs if r.method == "lora" and int(r.config["lora.r"]) == rank and r.seed in seeds}
        if set(at) == set(seeds):
            uniform.append(Arm(f"LoRA r={rank}", at, {}, None))
    readouts: list[Arm] = []
    for readout in READOUTS:
        table, found, shared = [], {}, {}
        for seed in seeds:
            try:
                want = json.loads((searches[seed].path / RANKS).read_text())["readouts"][readout]
            except (json.JSONDecodeError, KeyError, TypeError):  # a file from before ranks.json held every readout
                raise ConfigError(f"{searches[seed].path / RANKS}: holds no readouts.{readout} (written before "
                                  "ranks.json recorded every readout?)") from None
            # The readout's own retrain first, then any run of this seed at the same ranks (the search's own
            # retrain, another readout's, a uniform arm's): the same ranks, seed and recipe train the same model.
            matches = sorted((r for r in runs if r.seed == seed and r.ranks == want),
                             key=lambda r: r.config.get("search.ranks_readout") != json.dumps(readout))
            if not matches:
                break
            found[seed] = matches[0]
            table.append([want[name] for name in sorted(want)])
            own = matches[0] is searches[seed] if readout == "gates" else \
                matches[0].config.get("search.ranks_readout") == json.dumps(readout)
            if not own:
                earlier = [arm.label for arm in [*readouts, *uniform] if arm.runs.get(seed) is matches[0]]
                shared[seed] = earlier[0] if earlier else matches[0].variant
        else:
            readouts.append(Arm(LABELS[readout], found, shared, np.array(table)))
    return readouts, uniform, seeds


def _cell(values: np.ndarray, digits: int = 1, scale: float = 100.0) -> str:
    sd = values.std(ddof=1) * scale if len(values) > 1 else math.nan
    return f"{values.mean() * scale:.{digits}f} ± {sd:.{digits}f}"


def table(readouts: Sequence[Arm], uniform: Sequence[Arm], seeds: Sequence[int]) -> str:
    """The markdown table: score, parameters, paired difference to the nearest uniform arm, rank agreement."""
    if not uniform and not readouts:
        raise ConfigError("no arm has a run for every seed: nothing to tabulate")
    metric = next(iter(next(iter(uniform or readouts)).runs.values())).main_metric
    lines = [f"| arm | dev {metric} (%) | trainable params | Δ vs nearest uniform (pp; paired t, p) "
             "| ranks: mean | ranks across seeds: ρ (perm. p) | pair agreement (chance) | per-seed scores |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in [*readouts, *uniform]:
        params = arm.params(seeds)
        score = arm.scores(seeds)
        if arm.ranks is not None and uniform:
            near = nearest_uniform(float(params.mean()), uniform, seeds)
            d = paired(score, near.scores(seeds))
            test = "" if d["t"] is None else f"; t {d['t']:+.2f}, p {d['p']:.2f}"
            delta = f"{d['mean'] * 100:+.2f} ± {d['sd'] * 100:.2f} vs {near.label}{test}"
        else:
            delta = "—"
        if arm.ranks is not None:
            agree = seed_agreement(arm.ranks, None)
            rho = agree["rank_spearman"]
            p = agree["rank_spearman_p"]
            rho_cell = "— (a seed constant)" if rho is None else \
                f"{rho:+.2f} ({'< 0.001' if p < 0.001 else f'{p:.3f}'})"
            pair = f"{agree['pair_agreement']:.2f} ({agree['chance_agreement']:.2f})"
            mean_rank = f"{arm.ranks.mean():.2f}"
        else:
            rho_cell, pair, mean_rank = "—", "—", next(iter(arm.runs.values())).config["lora.r"]
        others = sorted(set(arm.shared.values()))
        shared = "".join(f"; seed{'s' * (len(at) > 1)} {', '.join(map(str, at))} = {other}'s run" for other in others
                         for at in [[s for s, o in sorted(arm.shared.items()) if o == other]])
        per_seed = ", ".join(f"{x * 100:.1f}" for x in score) + shared
        lines.append(f"| {arm.label} | {_cell(score)} | {params.mean():,.0f} (range {params.min():,.0f}–"
                     f"{params.max():,.0f}) | {delta} | {mean_rank} | {rho_cell} | {pair} | {per_seed} |")
    return "\n".join(lines)


def provenance(runs: Sequence[Run]) -> str:
    """The runs' commits, devices and dates, each set listed once."""
    keys = ("commit", "device", "date")
    return "; ".join(f"{key}: {', '.join(sorted({str(r.provenance.get(key)) for r in runs}))}" for key in keys)


def section(folders: Sequence[Path], argv: Sequence[str], title: str = SECTION) -> str:
    runs, warnings = [], []
    for folder in folders:  # e.g. a search variant's runs beside the uniform arms made for another table
        found, more = find_runs(folder)
        runs, warnings = [*runs, *found], [*warnings, *more]
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    readouts, uniform, seeds = arms_of(runs)
    budget = runs[0].budget
    return "\n".join([
        title, "",
        f"- table: `python -m autolora.analysis.readout_retrain {shlex.join(argv)}`",
        f"- runs: {len(runs)} under {', '.join(map(str, folders))}; seeds {', '.join(map(str, seeds))}; "
        f"{provenance(runs)}",
        f"- task {runs[0].task}, model {runs[0].model}; n_train {budget['n_train']}, n_dev {budget['n_dev']}; "
        f"search steps {[r.budget['search steps'] for r in runs if r.budget['search steps']][:1]}, retrain steps "
        f"{sorted({r.budget['retrain steps'] for r in runs})}",
        "", table(readouts, uniform, seeds), "",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m autolora.analysis.readout_retrain",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders of finished runs (one task and recipe)")
    parser.add_argument("--write", type=Path, help="a markdown file whose section this table replaces")
    parser.add_argument("--title", default=SECTION, help=f"the section's heading (default {SECTION!r})")
    args = parser.parse_args(argv)
    try:
        for folder in args.folders:
            if not folder.is_dir():
                raise ConfigError(f"{folder}: not a folder")
        text = section(args.folders, argv, args.title)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print_or_write_section(text, args.write, args.title)


if __name__ == "__main__":
    main()
