"""GLUE: local TSV files in the layout of download_glue_data.py, the packaged SST-2 sample, or the hub.

Quirks handled (see the data manifest of the staged benchmark files): CoLA has no header; MRPC starts with a
UTF-8 BOM; texts
contain bare double quotes, so rows are split on tabs only (no CSV quoting); RTE/QNLI/MNLI labels are
strings. Every row is checked; a bad one stops the run with its file and line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from autolora.engine.batch import Batch, model_inputs
from autolora.errors import DataError
from autolora.files import read_text
from autolora.tasks import metrics
from autolora.tasks.base import DataConfig, Splits, load_hub, local_folder, truncate


@dataclass(frozen=True)
class TsvLayout:
    """Where a GLUE task's columns sit in its TSV files."""

    dir: str  # folder under data.data_dir, e.g. "SST-2"
    train: str
    dev: str
    header: bool  # False for CoLA: then `columns` names the fields
    columns: tuple[str, ...] | None
    text: tuple[str, ...]  # one or two text columns
    label: str


@dataclass(frozen=True)
class HubLayout:
    """The same task on the Hugging Face hub (used when data.source resolves to hub)."""

    path: str
    name: str
    text: tuple[str, ...]
    label: str
    dev_split: str


def read_tsv(path: Path, layout: TsvLayout, labels: tuple[str, ...] | None) -> dict[str, list]:
    """Parse one GLUE TSV into {text_a, [text_b], labels}; labels are class ids or floats (regression)."""
    lines = read_text(path, DataError).split("\n")  # read_text drops MRPC's BOM
    if lines and lines[-1] == "":
        lines.pop()  # the final newline (CoLA's dev.tsv has none)
    columns = lines[0].rstrip("\r").split("\t") if layout.header else list(layout.columns or ())
    wanted = [*layout.text, layout.label]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; the header has {columns}")
    where = {c: columns.index(c) for c in wanted}
    label_ids = None if labels is None else {raw: i for i, raw in enumerate(labels)}
    out: dict[str, list] = {"text_a": [], "text_b": [], "labels": []}
    first = 1 if layout.header else 0
    for lineno, line in enumerate(lines[first:], start=first + 1):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(columns):
            raise DataError(f"{path}:{lineno}: expected {len(columns)} tab-separated fields, found {len(fields)}")
        raw = fields[where[layout.label]].strip()
        if label_ids is None:
            try:
                score = float(raw)
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {raw!r} is not a number") from None
            if not math.isfinite(score):  # a NaN score would make the loss NaN (read as divergence) and the metric NaN
                raise DataError(f"{path}:{lineno}: score {raw!r} is not a finite number")
            out["labels"].append(score)
        elif raw in label_ids:
            out["labels"].append(label_ids[raw])
        else:
            raise DataError(f"{path}:{lineno}: label {raw!r} is not one of {list(labels)}")
        out["text_a"].append(fields[where[layout.text[0]]].strip())
        out["text_b"].append(fields[where[layout.text[1]]].strip() if len(layout.text) > 1 else "")
    if not out["labels"]:
        raise DataError(f"{path}: no data rows")
    if len(layout.text) == 1:
        del out["text_b"]
    return out


class SentenceClassification:
    """The family: rows {text_a, [text_b], labels} -> a sequence classifier (or a regressor when `labels` is
    None). GLUE and your own files (tasks/own.py) share it; subclasses set name, labels, metrics, max_length."""

    head = "sequence_classification"
    labels: tuple[str, ...] | None  # label names in class-id order; None for regression
    metrics: tuple[str, ...]
    max_length: int

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def encode(self, split: Dataset, tokenizer) -> Dataset:
        """Tokenise (truncating to max_length); keeps only model inputs and labels. One tokenizer call on the
        whole split, not Dataset.map: map fingerprints its function by pickling the tokenizer (~1 s a call)."""
        texts = [list(split[c]) for c in ("text_a", "text_b") if c in split.column_names]
        encoded = tokenizer(*texts, truncation=True, max_length=self.max_length)
        return Dataset.from_dict({**encoded, "labels": list(split["labels"])})

    def collate(self, tokenizer) -> Callable[[list[dict]], Batch]:
        """Dynamic padding to the longest sequence of the batch."""
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def loss(self, outputs: Any, batch: Batch) -> Tensor:
        """Cross-entropy, or mean squared error for regression (STS-B); computed in float32."""
        logits = outputs.logits.float()
        if self.labels is None:
            return F.mse_loss(logits.squeeze(-1), batch["labels"].float())
        return F.cross_entropy(logits, batch["labels"])

    @torch.no_grad()
    def eval_items(self, split: Dataset, tokenizer) -> Dataset:
        """The units predictions are made for: the encoded rows of the evaluation split."""
        return self.encode(split, tokenizer)

    @torch.no_grad()
    def predict(self, model: nn.Module, items: Dataset, tokenizer, *, device: torch.device, autocast: Callable,
                batch_size: int) -> list[np.ndarray]:
        """The logits of each item (float32, on the host)."""
        loader = DataLoader(items, batch_size=batch_size, collate_fn=self.collate(tokenizer))
        was_training = model.training
        model.eval()
        outputs = []
        for batch in loader:
            with autocast():
                logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
            outputs.extend(logits.float().cpu().numpy())
        model.train(was_training)
        return outputs

    def score(self, split: Dataset, items: Dataset, predictions: list[np.ndarray]) -> tuple[dict[str, float], None]:
        """Metrics of an evaluation split: the task's metric list (accuracy, f1, mcc, or pearson and spearman)."""
        logits, gold = np.stack(predictions), np.asarray(items["labels"])
        if self.labels is None:
            return metrics.regression_scores(gold, logits[:, 0]), None
        return metrics.classification_scores(gold, np.argmax(logits, axis=-1), self.metrics), None


@dataclass(frozen=True)
class GlueTask(SentenceClassification):
    """One GLUE task: sentence(-pair) classification or regression (STS-B)."""

    name: str
    local: TsvLayout
    hub: HubLayout
    labels: tuple[str, ...] | None  # raw label values in class-id order; None for regression
    metrics: tuple[str, ...]
    main_metric: str
    max_length: int
    sample: str | None  # folder of a packaged sample under autolora/data, if any

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GlueTask:
        """Build from the `task` config node (conf/task/glue/*.yaml)."""
        local = dict(cfg["local"])
        local["text"], local["columns"] = tuple(local["text"]), local["columns"] and tuple(local["columns"])
        hub = dict(cfg["hub"], text=tuple(cfg["hub"]["text"]))
        labels = None if cfg["labels"] is None else tuple(str(label) for label in cfg["labels"])
        task = cls(cfg["name"], TsvLayout(**local), HubLayout(**hub), labels, tuple(cfg["metrics"]),
                   cfg["main_metric"], cfg["max_length"], cfg["sample"])
        if task.main_metric not in task.metrics:
            raise ValueError(f"task.main_metric {task.main_metric!r} is not in task.metrics {list(task.metrics)}")
        return task

    def load(self, data: DataConfig) -> Splits:
        """Train and dev splits from local TSVs, the packaged sample or the hub."""
        located = local_folder(data, self.name, self.local.dir, self.sample)
        if located is None:
            train, dev = self._load_hub()
            origin, files = f"hub {self.hub.path}/{self.hub.name}", ()
        else:
            folder, origin = located
            files = (folder / self.local.train, folder / self.local.dev)
            train = Dataset.from_dict(read_tsv(files[0], self.local, self.labels))
            dev = Dataset.from_dict(read_tsv(files[1], self.local, self.labels))
        return Splits(truncate(train, data.max_train_samples), truncate(dev, data.max_eval_samples), origin,
                      files=files)

    def _load_hub(self) -> tuple[Dataset, Dataset]:
        parts = load_hub(self.name, self.hub.path, self.hub.name, self.local.dir)
        columns = {self.hub.text[0]: "text_a", self.hub.label: "labels"}
        if len(self.hub.text) > 1:
            columns[self.hub.text[1]] = "text_b"

        def standard(split: Dataset) -> Dataset:
            split = split.rename_columns(columns)
            return split.remove_columns([c for c in split.column_names if c not in columns.values()])

        return standard(parts["train"]), standard(parts[self.hub.dev_split])
