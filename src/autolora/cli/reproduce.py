"""`make reproduce` / `make reproduce-smoke`: run a matrix of experiments, then write its tables.

A matrix (conf/matrix/NAME.yaml) lists experiment files (conf/experiment/, each pinning model, task, recipe
and seeds) and named method specs (AutoLoRA, LoRA r=8, the rank grid, AdaLoRA, the ablations). Each
(experiment, spec) pair is one Hydra multirun over the experiment's seeds, run as
`python -m autolora -m experiment=E <spec> ...` into multirun/reproduce/NAME/<time>/E/SPEC/. Then the small
files of every finished run are copied to results/runs/NAME/ with their provenance (report.json) and
`autolora-report` writes results/NAME.md, .csv and figures.

    python -m autolora.cli.reproduce --matrix smoke
    python -m autolora.cli.reproduce --matrix minilm --data-dir /data   # /data holds glue/, conll2003/, e2e/ ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from autolora.analysis import protocol_table
from autolora.analysis.report import report_folder
from autolora.cli.protocol import SELECTION, run_matrix
from autolora.files import write_json
from autolora.layout import METRICS, SMALL_FILES, config_dir
from autolora.provenance import git_commit


def load_matrix(name: str) -> dict:
    path = config_dir() / "matrix" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        print(f"reproduce: error: no matrix {name!r}; choose one of {', '.join(known)}", file=sys.stderr)
        raise SystemExit(2)
    return yaml.safe_load(path.read_text())


def data_override(data_dir: str | None) -> list[str]:
    """data.data_dir=DATA_DIR for every experiment: the folder holding glue/, conll2003/, e2e/, ..."""
    return [] if data_dir is None else [f"data.data_dir={data_dir}"]


def jobs(matrix: dict, data_dir: str | None, root: Path, launcher: str | None = None,
         at_once: int | None = None) -> list[tuple[str, str, list[str]]]:
    """(experiment, spec name, autolora-run arguments) for every multirun of the matrix; `launcher` (parallel,
    local, slurm: conf/hydra/launcher/) runs the points of each multirun as parallel jobs instead of one by one;
    `at_once`: hydra.launcher.jobs of the parallel launcher (points at once on this machine's GPU)."""
    planned = []
    groups = [("methods", matrix["experiments"]), ("grid", matrix.get("grid_experiments", [])),
              ("ablations", matrix.get("ablation_experiments", []))]
    for group, experiments in groups:
        for experiment in experiments:
            for spec, overrides in matrix.get(group, {}).items():
                args = ["-m", f"experiment={experiment}", *overrides, *matrix.get("overrides", []),
                        *data_override(data_dir), f"hydra.sweep.dir={root / experiment / spec}",
                        *([f"hydra/launcher={launcher}"] if launcher else []),
                        *([f"hydra.launcher.jobs={at_once}"] if launcher == "parallel" and at_once else [])]
                planned.append((experiment, spec, args))
    return planned


def collect(root: Path, target: Path) -> int:
    """Copy the small files of every finished run under root to target (same relative layout)."""
    count = 0
    for metrics in sorted(root.rglob(METRICS)):
        run_dir = metrics.parent
        destination = target / run_dir.relative_to(root)
        destination.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, destination / name)
        count += 1
    return count


def subset(matrix: dict, experiments: str | None, methods: str | None) -> dict:
    """The matrix limited to some experiments and method specs (comma lists); a name not in it is an error."""
    for key, names in (("experiments", experiments), ("methods", methods)):
        if names is None:
            continue
        wanted = names.split(",")
        unknown = [n for n in wanted if n not in matrix[key]]
        if unknown:
            print(f"reproduce: {unknown[0]!r} is not among the matrix's {key}: {', '.join(matrix[key])}",
                  file=sys.stderr)
            raise SystemExit(2)
        matrix = {**matrix, key: [n for n in matrix[key] if n in wanted] if key == "experiments"
                  else {n: v for n, v in matrix[key].items() if n in wanted}}
    return matrix


def run_multiruns(planned: list[tuple[str, str, list[str]]], dry_run: bool) -> list[str]:
    """One Hydra multirun after the other; returns the experiment/spec of those that failed."""
    failed = []
    for index, (experiment, spec, run_args) in enumerate(planned, start=1):
        command = [sys.executable, "-m", "autolora", *run_args]
        print(f"[{index}/{len(planned)}] {experiment} · {spec}: autolora-run {' '.join(run_args)}", flush=True)
        if not dry_run and subprocess.run(command).returncode != 0:
            failed.append(f"{experiment}/{spec}")
    return failed


def check_arguments(args: argparse.Namespace) -> None:
    """Numbers that mean nothing and a --continue that names no folder: one line, exit 2, before anything runs
    (a mistyped --continue would otherwise start the whole matrix afresh in a new folder of that name)."""
    problem = ("--jobs must be at least 1" if args.jobs < 1 else
               "--deadline-min must be positive" if args.deadline_min is not None and args.deadline_min <= 0 else
               f"--continue {args.resume}: no such folder (a new matrix goes under --root)"
               if args.resume is not None and not args.resume.is_dir() else None)
    if problem:
        print(f"reproduce: error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", default="paper")
    parser.add_argument("--data-dir", default=None, help="folder holding glue/, e2e/, conll2003/, bionlp13cg/ ...")
    parser.add_argument("--root", type=Path, default=Path("multirun/reproduce"), help="where the runs go")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--launcher", choices=["parallel", "local", "slurm"], default=None,
                        help="Hydra launcher for each multirun (default: Hydra's basic launcher, one job at a time; "
                        "parallel: --jobs points at once on this machine's GPU, as many as fit)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (matrices with a select node; with --launcher parallel, its points at once)")
    parser.add_argument("--continue", dest="resume", type=Path, default=None,
                        help="continue the matrix in this root (finished runs skipped, started ones resumed)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="one more override for every run, e.g. model.path=/data/mpnet (repeatable)")
    parser.add_argument("--no-report", action="store_true", help="run only; collect and report later")
    parser.add_argument("--deadline-min", type=float, default=None, help="start no run after this many minutes")
    parser.add_argument("--only", default=None, metavar="EXP,...", help="run these experiments of the matrix only")
    parser.add_argument("--methods", default=None, metavar="SPEC,...", help="run these method specs only")
    args = parser.parse_args(argv)
    check_arguments(args)
    matrix = subset(load_matrix(args.matrix), args.only, args.methods)
    # never reuse run dirs: a new matrix gets a new root; --continue names an earlier one
    root = args.resume or args.root / args.matrix / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if "select" in matrix:  # the selection protocol: tune on held-out train, then the seeds (cli/protocol.py)
        deadline = None if args.deadline_min is None else time.time() + 60 * args.deadline_min
        common = [*matrix.get("overrides", []), *data_override(args.data_dir), *args.extra]
        failed = run_matrix(matrix, root, common, args.jobs, deadline, args.dry_run)
    else:
        planned = [(e, spec, [*a, *args.extra])
                   for e, spec, a in jobs(matrix, args.data_dir, root, args.launcher, args.jobs)]
        failed = run_multiruns(planned, args.dry_run)
    if args.dry_run or args.no_report:
        if failed:
            print(f"reproduce: {len(failed)} failed or not started: {failed[:10]}", file=sys.stderr)
        return
    target = args.results / "runs" / args.matrix
    if target.exists() and not (target / "report.json").is_file():  # report.json: written below, ours to replace
        print(f"reproduce: {target} exists and was not written by reproduce (no report.json); move it away",
              file=sys.stderr)
        raise SystemExit(2)
    shutil.rmtree(target, ignore_errors=True)  # the folder mirrors this reproduction, nothing older
    found = collect(root, target)
    first = next(target.rglob(METRICS), None)
    device = json.loads(first.read_text())["device"] if first else "unknown"
    provenance = {
        "title": f"Reproduction matrix '{args.matrix}' (conf/matrix/{args.matrix}.yaml)",
        "command": "python -m autolora.cli.reproduce " + " ".join(sys.argv[1:] if argv is None else argv),
        "commit": git_commit(), "device": device, "date": dt.date.today().isoformat(),
        "notes": f"{found} finished runs; {len(failed)} multiruns failed: {failed or 'none'}. Each run's own command "
                 "and resolved config are in its metrics.json and config.yaml.",
    }
    write_json(target / "report.json", provenance)  # whole or not at all: protocol_table reads it strictly
    if "select" in matrix:  # its own table (selection, paired tests), from the copied select/ and final/ runs
        shutil.copy2(root / SELECTION, target / SELECTION)
        written, warnings = [protocol_table.write(target, args.results, args.matrix, device,
                                                  provenance["command"])], []
    else:
        written, warnings = report_folder(target, args.results)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path in written:
        print(path)
    if failed:
        raise SystemExit(f"reproduce: {len(failed)} multiruns failed: {failed}")


if __name__ == "__main__":
    main()
