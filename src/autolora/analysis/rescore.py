"""Recompute a run's metrics from its predictions, on another machine if need be.

Generation: the GPU machine may lack Java (METEOR, ROUGE-L and CIDEr need it) or pycocoevalcap, and
generating is the expensive part, so it is not repeated: this reads RUN_DIR/predictions.jsonl and the run's
config, reloads the references from the data (refused unless they are the files the run read) and scores with
metrics.e2e_scores. Token classification (NER): the predictions hold each sentence's words, gold and predicted
tags, so no data is needed; scored with metrics.entity_scores. The predictions are read by autolora.predictions:
predictions.jsonl, or the predictions.txt of an older run.
Writes RUN_DIR/metrics_rescored.json (the original metrics.json is left untouched; `autolora.analysis.report` prefers
the rescored metrics).

    python -m autolora.analysis.rescore RUN_DIR [RUN_DIR ...] [--data-dir DIR]   (DIR: for generation runs)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import yaml

from autolora import predictions
from autolora.console import tolerate_any_encoding
from autolora.errors import DataError
from autolora.files import read_text, write_json
from autolora.files import sha256_file as fingerprint_file
from autolora.layout import CONFIG, MARKER, METRICS, RESCORED
from autolora.tasks import build_task, metrics
from autolora.tasks.base import DataConfig
from autolora.tasks.ner import label_list

RESCORABLE = ("generation", "generation_files", "ner", "token_classification")  # task families with predictions


class RescoreError(ValueError):
    """A folder that cannot be rescored; the message names it and what is wrong."""


def check_references(run_dir: Path, files: tuple) -> None:
    """The reference files read here are those the run read (their sha256 in the run's marker): scores against
    other references would be scores of another dataset. A run from before data fingerprints is not checked."""
    try:
        recorded = json.loads((run_dir / MARKER).read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict) or not recorded:
        return
    for path in files:
        if fingerprint_file(Path(path)) not in recorded.values():
            raise RescoreError(f"{path}: not the file the run in {run_dir} read (its sha256 differs from every "
                               f"file recorded in {MARKER}); give the --data-dir of the run's own data")


def generation_scores(run_dir: Path, task, config: dict, data_dir: str | None) -> tuple[dict, dict]:
    """The generation metrics of the run's predictions against the references reloaded from data_dir."""
    if data_dir is None:
        raise RescoreError(f"{run_dir}: a generation run needs --data-dir (its references come from the data)")
    data = DataConfig(source="local", data_dir=data_dir, max_train_samples=1,
                      max_eval_samples=config["data"]["max_eval_samples"])
    splits = task.load(data)
    check_references(run_dir, splits.files)
    split = list(splits.scored().values())[-1]  # the headline split (E2E: test)
    references: dict[str, list[str]] = {}
    for source, target in zip(split["source"], split["target"], strict=True):
        references.setdefault(source, []).append(target)
    found = predictions.read(run_dir, RescoreError)
    if found.kind != "generation":
        raise RescoreError(f"{found.path}: holds {found.kind} predictions, not a generation run's")
    generated = {record["source"]: record["generated"] for record in found.records}
    missing = [s for s in references if s not in generated]
    extra = [s for s in generated if s not in references]
    if missing or extra or len(generated) != len(found.records):
        what = (f"lacks {len(missing)} sources of the references, e.g. {missing[0]!r}" if missing else
                f"holds {len(extra)} sources the references lack, e.g. {extra[0]!r}" if extra else
                "holds a source twice")
        raise RescoreError(f"{found.path}: {what}")
    sources = list(references)
    scores = metrics.e2e_scores([generated[s] for s in sources], [references[s] for s in sources])
    return scores, {"n_sources": len(sources)}


def tagging_scores(run_dir: Path, task) -> tuple[dict, dict]:
    """The entity scores of the run's predictions (gold tags included: no data needed)."""
    found = predictions.read(run_dir, RescoreError)
    if found.kind != "token_classification":
        raise RescoreError(f"{found.path}: holds {found.kind} predictions, not a token-classification run's")
    gold = [record["gold"] for record in found.records]
    predicted = [record["predicted"] for record in found.records]
    try:
        for tags in (gold, predicted):
            label_list(tags, task.scheme, found.path)
    except DataError as err:
        raise RescoreError(str(err)) from None
    return metrics.entity_scores(gold, predicted, task.scheme), {"n_sentences": len(gold)}


def run_config(run_dir: Path) -> dict:
    """The resolved config a run saved in its folder (checked: a folder, a readable YAML mapping with task and data)."""
    if not run_dir.is_dir():
        raise RescoreError(f"{run_dir}: no such folder")
    try:
        config = yaml.safe_load(read_text(run_dir / CONFIG, RescoreError))
    except yaml.YAMLError:
        raise RescoreError(f"{run_dir / 'config.yaml'}: not YAML") from None
    if (not isinstance(config, dict) or not isinstance(config.get("task"), dict)
            or not isinstance(config.get("data"), dict)):
        raise RescoreError(f"{run_dir / 'config.yaml'}: not the config of a run (no task and data sections)")
    return config


def headline_split(run_dir: Path) -> str:
    """The split a finished run's scores are headlined under (metrics.json retrain.eval_split; dev for old runs)."""
    try:
        record = json.loads(read_text(run_dir / METRICS, RescoreError))
        return record["retrain"].get("eval_split", "dev")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise RescoreError(f"{run_dir / 'metrics.json'}: not the metrics of a finished run") from None


def rescore(run_dir: Path, data_dir: str | None) -> dict:
    """The run's metrics recomputed here from its predictions; returns what was written to metrics_rescored.json,
    the scores under the name of the run's headline split (metrics.json retrain.eval_split: test for NER, E2E)."""
    config = run_config(run_dir)
    if config["task"].get("family") not in RESCORABLE:
        raise RescoreError(f"{run_dir}: a {config['task'].get('family')!r} run; rescore scores generation and "
                           "token-classification runs only")
    try:
        task = build_task(config["task"])
    except (ValueError, KeyError, TypeError) as err:
        raise RescoreError(f"{run_dir / 'config.yaml'}: task: {err}") from None
    split = headline_split(run_dir)
    if task.head == "token_classification":
        scores, counts = tagging_scores(run_dir, task)
    else:
        scores, counts = generation_scores(run_dir, task, config, data_dir)
    payload = {"eval_split": split, split: scores, **counts, "scored_on": platform.node(),
               "date": dt.date.today().isoformat(),
               "note": "recomputed from the run's predictions by autolora.analysis.rescore"}
    write_json(run_dir / RESCORED, payload)
    return payload


def main(argv: list[str] | None = None) -> None:
    tolerate_any_encoding()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir", help="data.data_dir holding the task's files (generation runs)")
    args = parser.parse_args(argv)
    failed = 0
    for run_dir in args.runs:  # one bad folder is reported and skipped; the others are still scored
        try:
            payload = rescore(run_dir, args.data_dir)
            print(run_dir, payload[payload["eval_split"]])
        except (ValueError, OSError) as err:  # RescoreError, DataError, the scorers' checks, an unwritable output
            print(f"rescore: error: {err}", file=sys.stderr)
            failed += 1
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    main()
