"""A -m sweep's bookkeeping: each point reports how it ended, and the sweep ends with one screen of failures.

A point that fails (bad data, divergence, a crash) fails only its own job; the others run. Points write their
outcome to SWEEP_DIR/.autolora-sweep/<invocation>/<job number>.json, which works whichever launcher ran them
(in this process, local subprocesses or SLURM jobs); `summary` reads them once Hydra returns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from autolora.files import write_json

FOLDER = ".autolora-sweep"
SHOWN = 20  # failed points listed; the rest are counted


def outcome_path(sweep_dir: Path, invocation: str, number: int) -> Path:
    return Path(sweep_dir) / FOLDER / invocation / f"{number}.json"


def record(sweep_dir: Path, invocation: str, number: int, overrides: Sequence[str], status: int, message: str) -> None:
    """How one point ended: status 0 done (or skipped), else its exit status and one line."""
    write_json(outcome_path(sweep_dir, invocation, number),
               {"overrides": list(overrides), "status": status, "message": message})


def summary(sweep_dir: Path, invocation: str, labels: Sequence[str]) -> tuple[str, int]:
    """(the text to print, the sweep's exit status) for points named by `labels`: 0 when every point is done;
    the failed points' status when they share one, else 1."""
    done, skipped, failed = 0, 0, []
    for number, label in enumerate(labels):
        path = outcome_path(sweep_dir, invocation, number)
        try:
            outcome = json.loads(path.read_text())
        except (OSError, ValueError):
            outcome = {"status": 1, "message": "did not report (not started, or killed)"}
        if outcome["status"] == 0:
            skipped += outcome["message"].startswith("skipped")
            done += not outcome["message"].startswith("skipped")
        else:
            failed.append((label, outcome["status"], outcome["message"]))
    head = f"sweep {sweep_dir}: {len(labels)} points, {done} done"
    head += f", {skipped} skipped (finished before)" if skipped else ""
    if not failed:
        return head, 0
    lines = [f"{head}, {len(failed)} failed:"]
    lines += [f"  {label}: exit {status}: {message}" for label, status, message in failed[:SHOWN]]
    if len(failed) > SHOWN:
        lines.append(f"  ... and {len(failed) - SHOWN} more")
    lines.append(f"  rerun the failed points: the same command plus hydra.sweep.dir={sweep_dir} resume=true")
    statuses = {status for _, status, _ in failed}
    return "\n".join(lines), statuses.pop() if len(statuses) == 1 else 1
