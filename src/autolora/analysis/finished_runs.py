"""Finished runs read back from their directories (metrics.json + config.yaml), for the report; reads only.

A folder of any shape (outputs/, a multirun/ sweep, results/runs/NAME) is walked for directories holding both
files. A run that cannot be read is skipped with a one-line reason; nothing here raises past RunError.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autolora.files import read_text, strict_json
from autolora.layout import ALPHA, CONFIG, MARKER, METRICS, RANKS, RESCORED, RUN_ONLY
from autolora.method.registry import unread_groups


class RunError(ValueError):
    """A run directory that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Run:
    """One finished run, as read back from its directory."""

    path: Path
    task: str
    model: str
    method: str
    variant: str  # the method's label, e.g. 'AutoLoRA (eta=0)', 'LoRA r=8'
    seed: int
    split: str  # which split the scores are on: 'dev' or 'test'
    main_metric: str
    scores: dict[str, float | None]
    ranks: dict[str, int]
    gates: dict[str, list[float]] | None  # normalise(alpha) per matrix, for runs that searched
    threshold: float | None
    trainable_params: int
    search_s: float | None
    retrain_s: float
    budget: dict[str, Any]  # n_train, n_dev and the steps of each phase: what the run actually did
    config: dict[str, str]  # dotted key -> JSON value, without RUN_ONLY keys and the groups the method ignores
    provenance: dict[str, Any]  # command, commit, device, date, versions


def variant_of(config: Mapping[str, Any]) -> str:
    """A short label for the method and its ablation settings, e.g. 'AutoLoRA', 'LoRA r=8', 'AutoLoRA (eta=0)',
    'AdaLoRA r=4 (lr x10)', 'EVA r=4 (rho 2)'."""
    if config["method"] == "lora":
        return f"LoRA r={config['lora']['r']}"
    if config["method"] == "adalora":
        # Runs from before adalora.lr_scale existed trained at retrain.lr itself: label them x1.
        lr_scale = float(config["adalora"].get("lr_scale", 1.0))
        return f"AdaLoRA r={config['adalora']['target_r']} (lr x{lr_scale:g})"
    if config["method"] == "eva":
        return f"EVA r={config['eva']['r']} (rho {float(config['eva']['rho']):g})"
    search = config["search"]
    notes = []
    if search["ranks_file"]:
        notes.append("given ranks")
    if search["alpha_norm"] != "softmax":
        notes.append(f"alpha {search['alpha_norm']}")
    if float(search["eta"]) == 0:
        notes.append("eta=0")
    return "AutoLoRA" + (f" ({', '.join(notes)})" if notes else "")


def flat_config(config: Mapping[str, Any], method: str, prefix: str = "") -> dict[str, str]:
    """{'search.k': '8', ...}: every leaf as JSON, without RUN_ONLY keys and the groups `method` never reads."""
    skipped = RUN_ONLY + unread_groups(method)
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if any(name == s or name.startswith(s + ".") for s in skipped):
            continue
        if isinstance(value, Mapping) and value:
            flat.update(flat_config(value, method, f"{name}."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def _load(path: Path, parse: Callable[[str], Any]) -> Any:
    """A mapping from a file; JSON is read strictly (files.strict_json: no NaN, which write_json never writes)."""
    text = read_text(path, RunError)  # missing, empty, binary, not UTF-8: one line naming the file
    try:
        payload = parse(text)
    except (ValueError, yaml.YAMLError) as err:  # JSONDecodeError is a ValueError
        raise RunError(f"{path}: cannot be read "
                       f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(payload, dict):
        raise RunError(f"{path}: expected a mapping, found {type(payload).__name__}")
    return payload


def _score(name: str, value: Any) -> float | None:
    if value is None:  # a metric that could not be computed (METEOR without Java)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"score {name!r} is {value!r}, not a number")
    return float(value)


def _gates(path: Path, metrics: Mapping[str, Any]) -> tuple[dict[str, list[float]] | None, float | None]:
    """The final gates and threshold of a run's search: ranks.json, else alpha.json; (None, None) without."""
    if (path / RANKS).is_file():
        payload = _load(path / RANKS, strict_json)
        return payload.get("alpha"), payload.get("threshold")
    if (path / ALPHA).is_file():
        return _load(path / ALPHA, strict_json), (metrics.get("search") or {}).get("threshold")
    return None, None


def marker(path: Path) -> dict[str, Any]:
    """The run marker's record ({} when it is absent or unreadable: results/runs/ copies leave it out)."""
    try:
        payload = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def data_identity(path: Path) -> str | None:
    """The sha256 of every data file the run read (its marker), digested into one short JSON value; None without
    a marker. The
    paths are left out (the same files sit in different folders on different machines), the contents are not:
    runs on different data are never seeds of one group."""
    data = marker(path).get("data")
    if not isinstance(data, dict) or not data:
        return None
    return json.dumps(hashlib.sha256(" ".join(sorted(map(str, data.values()))).encode()).hexdigest()[:12])


def run_date(path: Path, metrics: Mapping[str, Any]) -> str:
    """The day the run started: metrics.json's started_at, else the run marker's creation time, else the file's."""
    if "started_at" in metrics:
        return str(metrics["started_at"])[:10]
    created = str(marker(path).get("created", ""))[:10]
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", created):
        return created
    return dt.date.fromtimestamp((path / METRICS).stat().st_mtime).isoformat() + " (file time)"


def _parse(path: Path, metrics: Mapping[str, Any], config: Mapping[str, Any]) -> Run:
    retrain, search = metrics["retrain"], metrics.get("search")  # no search: LoRA, AdaLoRA, given ranks
    rescored = path / RESCORED  # autolora.analysis.rescore: the same predictions scored again
    scored = _load(rescored, strict_json) if rescored.is_file() else retrain
    scores = scored[scored.get("eval_split", "dev")]  # the headline split (test for NER, E2E); older runs: dev
    gates, threshold = _gates(path, metrics)
    if gates is not None and not all(isinstance(g, list) and g and all(isinstance(x, int | float) for x in g)
                                     for g in gates.values()):
        raise ValueError("the gates of ranks.json/alpha.json are not lists of numbers")
    ranks = {str(name): int(rank) for name, rank in metrics["ranks"].items()}
    return Run(
        path=path, task=str(metrics["task"]), model=str(metrics["model"]), method=str(config["method"]),
        variant=variant_of(config), seed=int(metrics["seed"]),
        split=str(retrain.get("eval_split", metrics.get("eval_split", "dev"))),  # older runs: no key, dev
        main_metric=str(metrics["main_metric"]),
        scores={name: _score(name, v) for name, v in scores.items() if not isinstance(v, dict)},  # not per_type
        ranks=ranks, gates=gates, threshold=None if threshold is None else float(threshold),
        trainable_params=int(retrain["trainable_params"]),
        search_s=None if search is None else float(search["wall_time_s"]), retrain_s=float(retrain["wall_time_s"]),
        budget={"n_train": metrics.get("n_train"), "n_dev": metrics.get("n_dev"), "n_test": metrics.get("n_test"),
                "search steps": None if search is None else search.get("steps"), "retrain steps": retrain.get("steps")},
        config={**flat_config(config, str(config["method"])),
                **({"data files (sha256)": identity} if (identity := data_identity(path)) else {})},
        provenance={"command": metrics.get("command"), "commit": metrics.get("git_commit"),
                    "device": metrics.get("device"), "date": run_date(path, metrics),
                    "versions": ", ".join(f"{k} {v}" for k, v in (metrics.get("versions") or {}).items()) or None},
    )


def read_run(path: Path) -> Run:
    """Parse one run directory; RunError names the file and what is wrong with it."""
    if not (path / CONFIG).is_file():
        raise RunError(f"{path}: metrics.json without config.yaml beside it")
    metrics, config = _load(path / METRICS, strict_json), _load(path / CONFIG, yaml.safe_load)
    try:
        return _parse(path, metrics, config)
    except RunError:
        raise
    except KeyError as err:
        raise RunError(f"{path}: metrics.json or config.yaml lacks the key {err}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise RunError(f"{path}: unexpected content ({err})") from None


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)  # .hydra/, .x.tmp staging


def find_runs(folder: Path) -> tuple[list[Run], list[str]]:
    """Every finished run below `folder`, and one warning per run skipped (or for all unfinished ones)."""
    runs, warnings = [], []
    for metrics in sorted(folder.rglob(METRICS)):
        if _hidden(metrics.parent, folder):
            continue
        try:
            runs.append(read_run(metrics.parent))
        except RunError as err:
            warnings.append(f"skipped {err}")
    unfinished = sorted(p.parent for p in folder.rglob(CONFIG)
                        if not _hidden(p.parent, folder) and not (p.parent / METRICS).exists())
    if unfinished:
        warnings.append(f"left out {len(unfinished)} unfinished run(s) (config.yaml without metrics.json), e.g. "
                        f"{unfinished[0]}")
    return runs, warnings
