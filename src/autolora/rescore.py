"""Recompute a generation run's metrics from its predictions, on another machine if need be.

The GPU machine may lack Java (METEOR) or pycocoevalcap; generation is the expensive part and is not
repeated. This reads RUN_DIR/predictions.txt and the run's config, reloads the references from the
data, scores with metrics.e2e_scores and writes RUN_DIR/metrics_rescored.json (the original
metrics.json is left untouched; `autolora.report` prefers the rescored metrics).

    python -m autolora.rescore RUN_DIR [RUN_DIR ...] --data-dir DIR
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
from pathlib import Path

import yaml

from autolora import metrics
from autolora.files import write_json
from autolora.tasks import build_task
from autolora.tasks.base import DataConfig


def read_predictions(path: Path) -> dict[str, str]:
    """source -> generated text, from the TSV the generation task writes."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0] != ["source", "generated"]:
        raise ValueError(f"{path}: expected a 'source<TAB>generated' header")
    return {source: generated for source, generated in rows[1:]}


def rescore(run_dir: Path, data_dir: str) -> dict:
    """The run's generation metrics recomputed here; returns what was written to metrics_rescored.json."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    task = build_task(config["task"])
    data = DataConfig(source="local", data_dir=data_dir, max_train_samples=1,
                      max_eval_samples=config["data"]["max_eval_samples"])
    split = task.load(data).dev
    references: dict[str, list[str]] = {}
    for source, target in zip(split["source"], split["target"], strict=True):
        references.setdefault(source, []).append(target)
    generated = read_predictions(run_dir / "predictions.txt")
    missing = [s for s in references if s not in generated]
    if missing:
        raise ValueError(f"{run_dir}: predictions.txt lacks {len(missing)} sources, e.g. {missing[0]!r}")
    sources = list(references)
    scores = metrics.e2e_scores([generated[s] for s in sources], [references[s] for s in sources])
    payload = {"dev": scores, "n_sources": len(sources), "scored_on": platform.node(), "date": dt.date.today().isoformat(),
               "note": "recomputed from predictions.txt by autolora.rescore"}
    write_json(run_dir / "metrics_rescored.json", payload)
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data-dir", required=True, help="data.data_dir holding the task's files")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        print(run_dir, rescore(run_dir, args.data_dir)["dev"])


if __name__ == "__main__":
    main()
