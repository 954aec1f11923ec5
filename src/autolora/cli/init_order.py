"""Issue #31's lead on a real task: does what the draw of A fixes at the search's start predict the order of
the final gates inside each matrix? Per seed, one search of a run's config (the same model, split, loaders
and search as `autolora-run method=autolora`, no retrain), with two start quantities per component j:
‖G A_jᵀ‖ (G = ∂L/∂W on D_tr at the start, B = 0: B_j's first gradient) and ‖A_j‖ (blind to the data), each
ranked against the final gates by Spearman's rho inside every matrix (analysis.planted.order_rhos).

    python -m autolora.cli.init_order experiment=minilm_glue_cola data.data_dir=DIR seed=0 --out s0.json
    python -m autolora.cli.init_order --table s0.json s1.json s2.json    # mean ± sd over the seeds

The planted teacher's version of the same measurement: analysis.planted (init_*/gate_order_rho columns).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from autolora.analysis.planted import init_alignment, order_rhos
from autolora.cli.overrides import check_overrides
from autolora.engine.batch import model_inputs, to_device
from autolora.engine.checkpoint import Checkpointer
from autolora.errors import ConfigError, UserError
from autolora.files import read_json, write_json
from autolora.runner.job import Job, seed_everything
from autolora.runner.phases import run_search, search_start
from autolora.runner.preflight import load_inputs
from autolora.runner.run_config import check_config

QUANTITIES = ("gradient", "norm")
LABELS = {"gradient": "‖G A_jᵀ‖ at the start", "norm": "‖A_j‖"}


def measure(overrides: list[str], batches: int | None = None) -> dict:
    """The start quantities, the final gates and their order agreement for one config. `batches`: D_tr batches
    the start's gradient averages over (None: all of D_tr)."""
    # composed and checked as autolora-run does (unknown keys and groups, bad values: one ConfigError line)
    settings, task = check_config(check_overrides(list(overrides))[0].cfg)
    if settings.method != "autolora":
        raise ConfigError(f"method={settings.method}: the start-order measurement runs AutoLoRA's search")
    seed_everything(settings.seed)
    inputs = load_inputs(settings, task)
    with tempfile.TemporaryDirectory() as scratch:  # the search's checkpoints, never kept
        job = Job(settings, task, Path(scratch), inputs.tokenizer, task.encode(inputs.splits.train, inputs.tokenizer),
                  inputs.splits.scored(), Checkpointer(Path(scratch), 10**9, device=settings.device))
        model, train_loader, val_loader = search_start(job)

        def batch_loss(m, batch):
            with job.autocast():
                return task.loss(m(**model_inputs(batch)), batch)

        model.eval()  # the expected gradient: no dropout draw in it
        start = init_alignment(model, (to_device(b, settings.device) for b in itertools.islice(train_loader, batches)),
                               batch_loss)
        searched = run_search(job, model, train_loader, val_loader, lambda *args, **kwargs: None)
    per_matrix = {q: order_rhos({n: v[q] for n, v in start.items()}, searched.gates) for q in QUANTITIES}
    return {"overrides": overrides, "seed": settings.seed, "batches": batches,
            "rho": {q: float(np.mean(list(rhos.values()))) if rhos else math.nan for q, rhos in per_matrix.items()},
            "rho_per_matrix": per_matrix, "start": start, "gates": searched.gates}


def read_measurement(path: Path) -> dict:
    """One --out file; a ConfigError names a file that is missing, unreadable or not a measurement."""
    found = read_json(path, ConfigError)
    rho = found.get("rho") if isinstance(found, dict) else None
    if not isinstance(rho, dict) or any(not isinstance(rho.get(q), (int, float, type(None))) for q in QUANTITIES):
        raise ConfigError(f"{path}: not a start-order measurement (no rho per quantity {', '.join(QUANTITIES)})")
    return found


def check_out(out: Path) -> None:
    """Before the search runs: --out is a new file, or an earlier measurement (a rerun replaces it), in a folder
    that can be written; never a file of the user's."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a JSON file")
    if out.exists():
        try:
            read_measurement(out)
        except ConfigError:
            raise ConfigError(f"--out {out} exists and is not a start-order measurement: not written over") from None
    folder = next((p for p in [out.parent, *out.parent.parents] if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {folder} cannot be written")


def table(paths: list[Path]) -> str:
    """Mean ± sd over seeds of each quantity's rho, and how many seeds had it above 0."""
    runs = [read_measurement(p) for p in paths]
    lines = ["| start quantity | rho with the final gates, mean ± sd | seeds > 0 | per seed |", "|---|---|---|---|"]
    for q in QUANTITIES:
        rhos = [math.nan if r["rho"][q] is None else r["rho"][q] for r in runs]
        sd = statistics.stdev(rhos) if len(rhos) > 1 else float("nan")
        lines.append(f"| {LABELS[q]} | {statistics.mean(rhos):+.2f} ± {sd:.2f} | {sum(x > 0 for x in rhos)} of "
                     f"{len(rhos)} | " + " ".join(f"{x:+.2f}" for x in rhos) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="the run's config overrides, as autolora-run takes them")
    parser.add_argument("--batches", type=int, default=None, help="D_tr batches for the start's gradient (all)")
    parser.add_argument("--out", type=Path, help="write the measurement here (JSON)")
    parser.add_argument("--table", type=Path, nargs="+", help="tabulate these measurements instead")
    args = parser.parse_args(argv)
    if args.table is None and args.out is None:
        parser.error("--out is required for a measurement")
    if args.batches is not None and args.batches < 1:
        parser.error("--batches must be at least 1")
    try:
        if args.table:
            print(table(args.table))
            return
        check_out(args.out)
        result = measure(args.overrides, args.batches)
    except UserError as err:
        print(f"init_order: error: {str(err).splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)  # atomic; an undefined rho (every matrix constant) is written as null
    print(f"seed {result['seed']}: " + ", ".join(f"{q} rho {result['rho'][q]:+.3f}" for q in QUANTITIES))


if __name__ == "__main__":
    main()
