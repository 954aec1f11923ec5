"""metrics.json: one run's record, built as typed parts by the runner and written once at the end.

The keys and their order are the file's format (the README's run-directory table explains them; analysis/
reads them back). A phase's record is also saved with the search's ranks.json, so a run resumed after its
search reads it back from there (`SearchRecord.from_json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autolora.errors import RanksFileError
from autolora.layout import RANKS


@dataclass(frozen=True)
class PhaseCost:
    """Wall time (resumed segments included), GPU-seconds (wall time x GPUs; None on CPU), peak GPU memory."""

    wall_time_s: float
    gpu_seconds: float | None
    peak_memory_mib: float | None

    def to_json(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time_s, "gpu_seconds": self.gpu_seconds,
                "peak_memory_mib": self.peak_memory_mib}


@dataclass(frozen=True)
class PhaseRecord:
    """A training phase that ends in an evaluation: the retrain (or the LoRA / AdaLoRA training)."""

    scores: Mapping[str, Any]  # {"eval_split": the headline split, "dev": {...}, "test": {...}} (Job.evaluate)
    steps: int
    n_train: int
    trainable_params: int
    cost: PhaseCost
    capture: Mapping[str, Any] | None  # engine.capture.CaptureStats, None when the loop stepped eagerly

    def to_json(self) -> dict[str, Any]:
        return {**self.scores, "steps": self.steps, "n_train": self.n_train, "trainable_params": self.trainable_params,
                **self.cost.to_json(), "capture": self.capture}


@dataclass(frozen=True)
class SearchRecord:
    """The search: its scores (when search.evaluate), its split of the training set, the threshold and what the
    gates say about the ranks (method.ranks.search_diagnostics)."""

    scores: Mapping[str, Any]
    steps: int
    n_train: int
    n_val: int
    trainable_params: int
    threshold: float
    cost: PhaseCost
    capture: Mapping[str, Any] | None
    gate_report: Mapping[str, Any]  # {"diagnostics": ..., "noise_test": ..., "warning": ...}

    def to_json(self) -> dict[str, Any]:
        return {**self.scores, "steps": self.steps, "n_train": self.n_train, "n_val": self.n_val,
                "trainable_params": self.trainable_params, "threshold": self.threshold, **self.cost.to_json(),
                "capture": self.capture, **self.gate_report}

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> SearchRecord:
        """The record as ranks.json holds it (written by to_json); a record lacking a key is refused in one line."""
        missing = sorted({"steps", "n_train", "n_val", "trainable_params", "threshold", "wall_time_s", "gpu_seconds",
                          "peak_memory_mib", "capture"} - set(saved))
        if missing:
            raise RanksFileError(f"{RANKS}: its search record lacks {', '.join(missing)}: not written by this "
                                 "version's search; start the run in a new folder")
        named = {"steps", "n_train", "n_val", "trainable_params", "threshold", "wall_time_s", "gpu_seconds",
                 "peak_memory_mib", "capture", "diagnostics", "noise_test", "warning"}
        return cls(scores={k: v for k, v in saved.items() if k not in named}, steps=saved["steps"],
                   n_train=saved["n_train"], n_val=saved["n_val"], trainable_params=saved["trainable_params"],
                   threshold=saved["threshold"],
                   cost=PhaseCost(saved["wall_time_s"], saved["gpu_seconds"], saved["peak_memory_mib"]),
                   capture=saved["capture"],
                   gate_report={k: saved[k] for k in ("diagnostics", "noise_test", "warning") if k in saved})


@dataclass
class RunRecord:
    """metrics.json. The fields up to `wandb` are known when the run starts; the phases fill in the rest."""

    task: str
    model: str
    method: str
    seed: int
    main_metric: str
    data: str  # where the data came from (Splits.origin)
    n_train: int
    n_eval: Mapping[str, int]  # rows per evaluation split: written as n_dev, n_test
    device: str
    precision: str
    compile: Mapping[str, str]  # the capture mode of each phase
    compile_reason: Mapping[str, str]  # why each phase runs in its mode (engine/auto_compile.Choice.reason)
    compile_cache: str | None  # inductor's cache folder when a phase compiles with it (engine/compile_cache.py)
    git_commit: str
    versions: Mapping[str, str]
    command: str
    processes: int
    started_at: str  # ISO time with zone: the report's date
    targets: Mapping[str, Any]  # the adapted projections and how they were chosen (models.targets.describe)
    wandb: Mapping[str, str] | None = None  # where the W&B run is
    search: SearchRecord | None = None
    ranks_file: str | None = None  # search.ranks_file, when the ranks came from there
    ranks_readout: str | None = None  # search.ranks_readout: whose of the file's readouts' ranks (None: "ranks")
    ranks_from: str | None = None  # search | ranks_file | uniform | adalora
    retrain: PhaseRecord | None = None
    adapter: str | None = None  # the peft adapter folder
    ranks: Mapping[str, int] = field(default_factory=dict)  # the ranks the adapter was trained at
    figures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The metrics.json payload; optional keys that are unset are left out."""
        out: dict[str, Any] = {
            "task": self.task, "model": self.model, "method": self.method, "seed": self.seed,
            "main_metric": self.main_metric, "data": self.data, "n_train": self.n_train,
            **{f"n_{split}": n for split, n in self.n_eval.items()},
            "device": self.device, "precision": self.precision, "compile": dict(self.compile),
            "compile_reason": dict(self.compile_reason), "compile_cache": self.compile_cache,
            "git_commit": self.git_commit, "versions": dict(self.versions), "command": self.command,
            "processes": self.processes, "started_at": self.started_at, "targets": dict(self.targets),
        }
        optional = {"wandb": self.wandb, "search": self.search and self.search.to_json(),
                    "ranks_file": self.ranks_file, "ranks_readout": self.ranks_readout, "ranks_from": self.ranks_from,
                    "retrain": self.retrain and self.retrain.to_json(), "adapter": self.adapter}
        out.update({key: value for key, value in optional.items() if value is not None})
        if self.retrain is not None:
            out.update({"ranks": dict(self.ranks), "figures": list(self.figures)})
        return out
