"""Experiment tracking: events.jsonl in the run directory, plus Weights & Biases when enabled.

The only module that imports ``wandb`` (lazily, so `logger=none` never pays for it). W&B runs offline
unless WANDB_API_KEY is set or ``logger.mode=online``; a missing network falls back to offline with a
warning and never fails the run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolora.files import write_text
from autolora.typecheck import check_types

log = logging.getLogger(__name__)
MODES = ("auto", "offline", "online")


@dataclass(frozen=True)
class LoggerConfig:
    """The `logger` config group: name none or wandb."""

    name: str  # none | wandb
    project: str | None
    mode: str  # auto: online when WANDB_API_KEY is set, else offline

    def __post_init__(self):
        check_types(self, "logger")
        if self.name not in ("none", "wandb"):
            raise ValueError(f"logger must be none or wandb, got {self.name!r}")
        if self.mode not in MODES:
            raise ValueError(f"logger.mode must be one of {MODES}, got {self.mode!r}")


class Tracker:
    """Appends one JSON line per logged step to events.jsonl and forwards it to W&B if a run is open."""

    def __init__(self, events_path: Path | None, wandb_run=None):
        # one os.write per line on an O_APPEND descriptor: a killed run never leaves half a line
        self._events = (None if events_path is None
                        else os.open(events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        self._wandb = wandb_run

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """One event: a phase ('search' or 'retrain'), its step and scalar values."""
        line = {"step": step, **record}
        if self._events is not None:
            os.write(self._events, (json.dumps(line) + "\n").encode())
        if self._wandb is not None:
            phase = record.get("phase", "run")
            self._wandb.log({f"{phase}/{k}": v for k, v in record.items() if k != "phase"})

    def summary(self, values: Mapping[str, Any], ranks: Mapping[str, int] | None = None) -> None:
        """Final metrics (and the ranks as a table) for the tracker's run summary."""
        if self._wandb is None:
            return
        import wandb

        self._wandb.summary.update({k: v for k, v in values.items() if isinstance(v, int | float | str)})
        if ranks:
            self._wandb.log({"ranks": wandb.Table(columns=["matrix", "rank"], data=[[n, r] for n, r in ranks.items()])})

    def where(self) -> dict[str, str] | None:
        """Where the W&B run is: an offline folder and the command that uploads it, or the online URL."""
        if self._wandb is None:
            return None
        if self._wandb.settings.mode == "offline":
            folder = str(self._wandb.settings.sync_dir)
            return {"mode": "offline", "dir": folder, "sync": f"wandb sync {folder}"}
        return {"mode": "online", "url": str(self._wandb.url)}

    def close(self) -> None:
        if self._events is not None:
            os.close(self._events)
            self._events = None
        if self._wandb is not None:
            self._wandb.finish()


def prune_events(path: Path, phase: str, step: int) -> None:
    """Before a resume: drop the events of `phase` after `step` (they are logged again) and any torn line."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not (event.get("phase") == phase and event.get("step", 0) > step):
            keep.append(line)
    write_text(path, "".join(f"{line}\n" for line in keep))


def open_tracker(cfg: LoggerConfig, run_dir: Path, config: Mapping[str, Any], run_name: str) -> Tracker:
    """A Tracker writing run_dir/events.jsonl, with a W&B run when cfg.name == 'wandb'."""
    events = Path(run_dir) / "events.jsonl"
    if cfg.name == "none":
        return Tracker(events)
    import wandb

    mode = cfg.mode
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    settings = wandb.Settings(init_timeout=30, silent=True)
    try:
        run = wandb.init(project=cfg.project, dir=str(run_dir), config=dict(config), name=run_name,
                         mode=mode, settings=settings, reinit="finish_previous")
    except (wandb.errors.Error, OSError, TimeoutError) as err:
        if mode == "offline":
            raise
        log.warning("W&B online init failed (%s); logging offline to %s instead", err, run_dir)
        run = wandb.init(project=cfg.project, dir=str(run_dir), config=dict(config), name=run_name,
                         mode="offline", settings=settings, reinit="finish_previous")
    return Tracker(events, run)
