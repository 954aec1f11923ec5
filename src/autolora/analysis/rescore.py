"""Recompute a run's metrics from its predictions, on another machine if need be.

Generation: the GPU machine may lack Java (METEOR, ROUGE-L and CIDEr need it) or pycocoevalcap, and
generating is the expensive part, so it is not repeated: this reads RUN_DIR/predictions.txt and the run's
config, reloads the references from the data and scores with metrics.e2e_scores. Token classification (NER):
predictions.txt holds `word gold predicted` lines, so no data is needed; scored with metrics.entity_scores.
Writes RUN_DIR/metrics_rescored.json (the original metrics.json is left untouched; `autolora.analysis.report` prefers
the rescored metrics).

    python -m autolora.analysis.rescore RUN_DIR [RUN_DIR ...] [--data-dir DIR]   (DIR: for generation runs)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import platform
import sys
from pathlib import Path

import yaml

from autolora.files import read_text, write_json
from autolora.layout import CONFIG, METRICS, PREDICTIONS, RESCORED
from autolora.tasks import build_task, metrics
from autolora.tasks.base import DataConfig

RESCORABLE = ("generation", "generation_files", "ner", "token_classification")  # task families with predictions.txt


class RescoreError(ValueError):
    """A folder that cannot be rescored; the message names it and what is wrong."""


def read_predictions(path: Path) -> dict[str, str]:
    """source -> generated text, from the TSV the generation task writes."""
    rows = list(csv.reader(io.StringIO(read_text(path, RescoreError), newline=""), delimiter="\t",
                           quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != ["source", "generated"]:
        raise RescoreError(f"{path}: expected a 'source<TAB>generated' header")
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise RescoreError(f"{path}:{lineno}: expected 2 tab-separated fields, found {len(row)}")
    return {source: generated for source, generated in rows[1:]}


def read_conll_predictions(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tags per sentence from the `word gold predicted` lines the NER task writes."""
    gold: list[list[str]] = [[]]
    predicted: list[list[str]] = [[]]
    for lineno, line in enumerate(read_text(path, RescoreError).splitlines(), start=1):
        if not line.strip():
            if gold[-1]:
                gold.append([])
                predicted.append([])
            continue
        fields = line.rsplit(" ", 2)  # the tags hold no space; a word might
        if len(fields) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'word gold predicted', found {line!r}")
        gold[-1].append(fields[1])
        predicted[-1].append(fields[2])
    if not gold[-1]:
        gold.pop()
        predicted.pop()
    return gold, predicted


def generation_scores(run_dir: Path, task, config: dict, data_dir: str | None) -> tuple[dict, dict]:
    """The generation metrics of predictions.txt against the references reloaded from data_dir."""
    if data_dir is None:
        raise ValueError(f"{run_dir}: a generation run needs --data-dir (its references come from the data)")
    data = DataConfig(source="local", data_dir=data_dir, max_train_samples=1,
                      max_eval_samples=config["data"]["max_eval_samples"])
    split = list(task.load(data).scored().values())[-1]  # the headline split (E2E: test)
    references: dict[str, list[str]] = {}
    for source, target in zip(split["source"], split["target"], strict=True):
        references.setdefault(source, []).append(target)
    generated = read_predictions(run_dir / PREDICTIONS)
    missing = [s for s in references if s not in generated]
    if missing:
        raise ValueError(f"{run_dir}: predictions.txt lacks {len(missing)} sources, e.g. {missing[0]!r}")
    sources = list(references)
    scores = metrics.e2e_scores([generated[s] for s in sources], [references[s] for s in sources])
    return scores, {"n_sources": len(sources)}


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
    """The run's metrics recomputed here from predictions.txt; returns what was written to metrics_rescored.json,
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
        gold, predicted = read_conll_predictions(run_dir / PREDICTIONS)
        scores, counts = metrics.entity_scores(gold, predicted, task.scheme), {"n_sentences": len(gold)}
    else:
        scores, counts = generation_scores(run_dir, task, config, data_dir)
    payload = {"eval_split": split, split: scores, **counts, "scored_on": platform.node(),
               "date": dt.date.today().isoformat(),
               "note": "recomputed from predictions.txt by autolora.analysis.rescore"}
    write_json(run_dir / RESCORED, payload)
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir", help="data.data_dir holding the task's files (generation runs)")
    args = parser.parse_args(argv)
    failed = 0
    for run_dir in args.runs:  # one bad folder is reported and skipped; the others are still scored
        try:
            payload = rescore(run_dir, args.data_dir)
            print(run_dir, payload[payload["eval_split"]])
        except ValueError as err:  # RescoreError, DataError, and the scorers' own checks of their input
            print(f"rescore: error: {err}", file=sys.stderr)
            failed += 1
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    main()
