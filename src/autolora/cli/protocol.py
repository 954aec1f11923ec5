"""A matrix run under the selection protocol (results/glue_base_protocol.md): tune, select, then seeds.

A matrix with a `select` node (conf/matrix/glue_base.yaml) runs, per (experiment, method spec), a chain of three
stages, every run its own process:
1. selection: the spec at each value of select.key, at seed select.seed, with data.select_on=heldout: trained on
   train minus a held-out share, scored on that share. The reported split (GLUE dev) is never read. AutoLoRA
   specs search once, at the first value; the other values retrain at that search's ranks.json
   (search.ranks_file), the way ranks always travel.
2. choice: the value with the best held-out main metric (selection.json holds every score and choice).
3. finals: the spec at its chosen value for each seed of `seeds`.

Chains run side by side, at most `jobs` runs at once (a base-size encoder at batch 16 leaves most of a GPU idle);
a free slot goes to the waiting run of the earliest experiment of the matrix, so a matrix cut off midway (a
deadline, a killed job) leaves its first experiments whole rather than every experiment half-done.
Runs go to ROOT/select/<experiment>/<spec>/<key>-<value> and ROOT/final/<experiment>/<spec>/seed-<n> (no '=':
Hydra reads the run dir). A finished run (its metrics.json) is skipped and a started one resumed (resume=true),
so the same command continues a killed matrix.
"""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from autolora.files import write_json
from autolora.layout import CONFIG, MARKER, METRICS

SELECTION = "selection.json"
RUNS_LOG = "runs.jsonl"  # one line per run that ran: folder, exit status, time


@dataclass(frozen=True)
class Planned:
    """One run of the matrix: where it goes and its autolora-run arguments (without the run dir)."""

    folder: Path
    args: tuple[str, ...]


def searches(overrides: Sequence[str]) -> bool:
    return "method=autolora" in overrides


def points(matrix: Mapping) -> list[tuple[str, str, list[str]]]:
    """(experiment, spec, overrides) of the matrix, experiment-major; method_experiments limits a spec."""
    limited = matrix.get("method_experiments", {})
    return [(experiment, spec, list(overrides)) for experiment in matrix["experiments"]
            for spec, overrides in matrix["methods"].items() if experiment in limited.get(spec, [experiment])]


def value_name(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def selection_waves(matrix: Mapping, root: Path, common: Sequence[str]) -> tuple[list[Planned], list[Planned]]:
    """(first wave, second wave): the second holds the AutoLoRA runs that retrain at the first's ranks.json."""
    select = matrix["select"]
    key, values = select["key"], list(select["values"])
    extra = [*select.get("overrides", []), f"seed={select.get('seed', 0)}"]
    first, second = [], []
    for experiment, spec, overrides in points(matrix):
        base = root / "select" / experiment / spec
        for index, value in enumerate(values):
            args = [f"experiment={experiment}", *overrides, *extra, *common, f"{key}={value}"]
            folder = base / f"{key}-{value_name(value)}"
            if searches(overrides) and index > 0:
                ranks = base / f"{key}-{value_name(values[0])}" / "ranks.json"
                second.append(Planned(folder, (*args, f"search.ranks_file={ranks}")))
            else:
                first.append(Planned(folder, tuple(args)))
    return first, second


def held_out_score(folder: Path) -> float | None:
    """The run's held-out main metric (its `dev` split under data.select_on=heldout), None if it did not finish."""
    path = folder / METRICS
    if not path.is_file():
        return None
    config = yaml.safe_load((folder / CONFIG).read_text())
    if config["data"]["select_on"] != "heldout":
        raise ValueError(f"{folder / CONFIG}: not a selection run (data.select_on is not heldout)")
    metrics = json.loads(path.read_text())
    value = metrics["retrain"]["dev"].get(metrics["main_metric"])
    return None if value is None else float(value)


def choose(matrix: Mapping, root: Path, only: str | None = None) -> dict[str, dict]:
    """Per 'experiment/spec' (or just `only`): every value's held-out score and the chosen value (best score;
    the grid's order breaks ties). A spec with a value that did not finish gets no choice and no finals: a best
    of part of the grid is not the protocol's choice, and the finals could not be redone once the rest finished."""
    select = matrix["select"]
    key, values = select["key"], list(select["values"])
    chosen = {}
    for experiment, spec, _ in points(matrix):
        if only is not None and only != f"{experiment}/{spec}":
            continue
        base = root / "select" / experiment / spec
        scores = {value_name(v): held_out_score(base / f"{key}-{value_name(v)}") for v in values}
        finished = [(s, i) for i, s in enumerate(scores.values()) if s is not None]
        complete = len(finished) == len(values)
        best = max(finished, key=lambda pair: (pair[0], -pair[1]))[1] if complete else None
        chosen[f"{experiment}/{spec}"] = {"key": key, "scores": scores,
                                          "chosen": None if best is None else values[best]}
    return chosen


def final_runs(matrix: Mapping, root: Path, common: Sequence[str], chosen: Mapping[str, dict]) -> list[Planned]:
    planned = []
    for seed in matrix["seeds"]:
        for experiment, spec, overrides in points(matrix):
            pick = chosen.get(f"{experiment}/{spec}")
            if pick is None or pick["chosen"] is None:
                continue
            planned.append(Planned(root / "final" / experiment / spec / f"seed-{seed}", (
                f"experiment={experiment}", *overrides, *common, f"{pick['key']}={pick['chosen']}",
                f"seed={seed}")))
    return planned


def command(run: Planned) -> list[str] | None:
    """The process for one run: None when it finished, resume=true when it started and was cut off."""
    if (run.folder / METRICS).is_file():  # layout: its presence means the run finished
        return None
    resume = ["resume=true"] if (run.folder / MARKER).is_file() else []
    return [sys.executable, "-m", "autolora", *run.args, f"hydra.run.dir={run.folder}", *resume]


class Slots:
    """At most n runs at once; a freed slot goes to the waiting run with the smallest priority (matrix order)."""

    def __init__(self, n: int):
        self.free, self.waiting, self.lock = n, [], threading.Condition()

    @contextmanager
    def take(self, priority: tuple):
        with self.lock:
            heapq.heappush(self.waiting, priority)
            self.lock.wait_for(lambda: self.free > 0 and self.waiting[0] == priority)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.lock.notify_all()  # another slot may still be free for the next in line
        try:
            yield
        finally:
            with self.lock:
                self.free += 1
                self.lock.notify_all()


@dataclass
class Runner:
    """Runs planned runs under shared slots and a deadline, logging each exit to log (one JSON line per run)."""

    slots: Slots
    deadline: float | None
    log: Path

    def one(self, run: Planned, priority: tuple) -> str | None:
        """Run it (or skip it if finished); None on success, else why not (the failure list's entry)."""
        cmd = command(run)
        if cmd is None:
            return None
        with self.slots.take(priority):
            if self.deadline is not None and time.time() > self.deadline:
                return f"{run.folder} (not started: deadline)"
            run.folder.parent.mkdir(parents=True, exist_ok=True)
            with open(run.folder.parent / f"{run.folder.name}.log", "a") as out:  # the run's console
                code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        with open(self.log, "a") as f:
            f.write(json.dumps({"run": str(run.folder), "rc": code, "time": time.time()}) + "\n")
        return None if code == 0 else f"{run.folder} (exit {code})"

    def all(self, runs: Sequence[Planned], priority: tuple) -> list[str]:
        """These side by side (each waits for a slot); the failures."""
        with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
            done = pool.map(lambda item: self.one(item[1], (*priority, item[0])), enumerate(runs))
            return [r for r in done if r is not None]


def run_matrix(matrix: Mapping, root: Path, common: Sequence[str], jobs: int, deadline: float | None = None,
               dry_run: bool = False) -> list[str]:
    """Every (experiment, spec) chain into root; returns what failed or did not start. selection.json is
    written at the end from the runs on disk, so a continued matrix chooses the same values."""
    first, second = selection_waves(matrix, root, common)
    if dry_run:
        for run in [*first, *second]:
            print("autolora-run", " ".join(run.args), f"hydra.run.dir={run.folder}")
        return []
    root.mkdir(parents=True, exist_ok=True)
    runner = Runner(Slots(jobs), deadline, root / RUNS_LOG)
    experiments = list(matrix["experiments"])

    def chain(point: tuple[str, str, list[str]]) -> list[str]:
        experiment, spec, _ = point
        rank = (experiments.index(experiment), list(matrix["methods"]).index(spec))
        base = root / "select" / experiment / spec
        mine = [run for run in first if run.folder.parent == base]
        retrains = [run for run in second if run.folder.parent == base]
        failed = runner.all(mine, (rank[0], 0, rank[1]))
        failed += runner.all(retrains, (rank[0], 1, rank[1]))
        pick = choose(matrix, root, only=f"{experiment}/{spec}")
        finals = final_runs(matrix, root, common, pick)
        return failed + runner.all(finals, (rank[0], 2, rank[1]))

    with ThreadPoolExecutor(max_workers=len(points(matrix))) as pool:
        failed = [f for chain_failed in pool.map(chain, points(matrix)) for f in chain_failed]
    write_json(root / SELECTION, choose(matrix, root))
    return failed
