"""Your own data: text classification (or regression), token classification and generation from files.

`task=text_classification | token_classification | generation` with task.train_file (and optionally
task.dev_file, task.test_file): each family reads the files, then shares the model side (encoding, loss,
prediction, metrics) with the paper's tasks of the same family (GLUE, CoNLL-style NER, E2E). Without a
dev or a test file, a seeded share of the training file (task.dev_fraction, task.split_seed) is the dev split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset

from autolora.errors import DataError
from autolora.tasks import metrics as metric_functions
from autolora.tasks.base import DataConfig, Splits, data_file, truncate
from autolora.tasks.e2e import Generation, TextGeneration
from autolora.tasks.glue import SentenceClassification
from autolora.tasks.ner import (
    ColumnLayout,
    TokenTagging,
    check_known_tags,
    check_scheme,
    label_list,
    read_columns,
)
from autolora.tasks.readers import check_present, hold_out, is_table, read_table, row_location
from autolora.typecheck import check_types

TOKEN_METRICS = ("f1", "precision", "recall", "f1_strict", "precision_strict", "recall_strict",
                 "token_accuracy")  # metrics.entity_scores: conlleval counting, then seqeval strict
GENERATION_METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")  # metrics.e2e_scores


def _check_main(name: str, known: tuple[str, ...]) -> None:
    if name not in known:
        raise ValueError(f"task.main_metric must be one of {list(known)}, got {name!r}")


@dataclass(frozen=True)
class OwnFiles:
    """The task keys naming your files: train, optional dev and test, and the held-out share of train."""

    train_file: str
    dev_file: str | None
    test_file: str | None
    dev_fraction: float  # used only without a dev and a test file
    split_seed: int  # the held-out dev rows are the same for every run seed

    def __post_init__(self):
        check_types(self, "task")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"task.dev_fraction must lie in (0, 1), got {self.dev_fraction}")
        if not 0 <= self.split_seed < 2**32:  # NumPy's seed range
            raise ValueError(f"task.split_seed must lie in [0, 2^32), got {self.split_seed}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> OwnFiles:
        return cls(cfg["train_file"], cfg["dev_file"], cfg["test_file"], cfg["dev_fraction"], cfg["split_seed"])

    def load(self, data: DataConfig, read: Callable[[Path, bool], Dataset], group: str | None = None) -> Splits:
        """read(path, is_training) for each file, training first; dev held out of train when no file gives one.
        `group`: a column whose equal values stay on one side of the held-out split (generation's source)."""
        if data.source not in ("auto", "local"):
            raise DataError(f"data.source={data.source}: your own files are read from disk (data.source=auto)")
        train_path = data_file(data, "train_file", self.train_file)
        dev_path = None if self.dev_file is None else data_file(data, "dev_file", self.dev_file)
        test_path = None if self.test_file is None else data_file(data, "test_file", self.test_file)
        train = read(train_path, True)
        dev = None if dev_path is None else read(dev_path, False)
        test = None if test_path is None else read(test_path, False)
        origin = f"{train_path}"
        if dev is None and test is None:
            kept, held = hold_out(len(train), self.dev_fraction, self.split_seed, train[group] if group else None)
            train, dev = train.select(kept), train.select(held)
            origin += (f" (dev: {len(held)} rows held out, task.dev_fraction={self.dev_fraction}, "
                       f"split_seed {self.split_seed})")
        limit = data.max_eval_samples
        return Splits(truncate(train, data.max_train_samples), None if dev is None else truncate(dev, limit), origin,
                      test=None if test is None else truncate(test, limit),
                      files=tuple(path for path in (train_path, dev_path, test_path) if path is not None))


@dataclass
class TextClassificationTask(SentenceClassification):
    """Sentence(-pair) classification, or regression when the label column holds floats (as run_glue.py)."""

    name: str
    files: OwnFiles
    text_columns: tuple[str, ...]
    label_column: str
    configured_labels: tuple[str, ...] | None  # task.labels; None: inferred from the training file
    configured_metrics: tuple[str, ...] | None
    configured_main: str | None
    max_length: int
    labels: tuple[str, ...] | None = None  # set by load(); None afterwards means regression
    metrics: tuple[str, ...] = ()
    main_metric: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TextClassificationTask:
        text = tuple(cfg["text_columns"])
        if len(text) not in (1, 2):
            raise ValueError(f"task.text_columns must name one or two columns, got {list(text)}")
        known = metric_functions.CLASSIFICATION_METRICS + metric_functions.REGRESSION_METRICS
        unknown = [m for m in cfg["metrics"] or () if m not in known]
        if unknown:
            raise ValueError(f"task.metrics {unknown} unknown; choose from {list(known)}")
        if cfg["main_metric"] is not None and cfg["metrics"] is not None and cfg["main_metric"] not in cfg["metrics"]:
            raise ValueError(f"task.main_metric {cfg['main_metric']!r} is not in task.metrics {list(cfg['metrics'])}")
        labels = None if cfg["labels"] is None else tuple(str(label) for label in cfg["labels"])
        twice = sorted({label for label in labels or () if labels.count(label) > 1})
        if twice:  # one class id per name: a repeated name would add a class no row can have
            raise ValueError(f"task.labels names {', '.join(map(repr, twice))} more than once: {list(labels)}")
        return cls(cfg["name"], OwnFiles.from_config(cfg), text, cfg["label_column"], labels,
                   cfg["metrics"] and tuple(cfg["metrics"]), cfg["main_metric"], cfg["max_length"])

    def load(self, data: DataConfig) -> Splits:
        """Rows {text_a, [text_b], labels} from your files; labels (or regression) from the training file."""
        splits = self.files.load(data, self.read)
        regression = self.labels is None
        default = metric_functions.REGRESSION_METRICS if regression else ("accuracy", "macro_f1")
        self.metrics = self.configured_metrics or default
        wrong = set(self.metrics) - set(metric_functions.REGRESSION_METRICS if regression else
                                         metric_functions.CLASSIFICATION_METRICS)
        if wrong:
            kind = "numbers (regression)" if regression else "classes"
            raise DataError(f"task.metrics {sorted(wrong)} do not fit column {self.label_column!r}: it holds {kind}")
        if "f1" in self.metrics and len(self.labels or ()) != 2:
            raise DataError(f"task.metrics: f1 is the positive (second) label's F1 of two labels; with "
                            f"{len(self.labels or ())} labels use macro_f1")
        self.main_metric = self.configured_main or self.metrics[0]
        return splits

    def read(self, path: Path, training: bool) -> Dataset:
        """One file as {text_a, [text_b], labels}; the training file fixes the label names (sorted) or regression."""
        table = read_table(path, [*self.text_columns, self.label_column])
        check_present(path, table, [*self.text_columns, self.label_column])
        raw = table[self.label_column]
        if training:
            self.labels = (self.configured_labels if self.configured_labels is not None
                           else infer_labels(path, table, self.label_column))
        rows = {"text_a": [str(t) for t in table[self.text_columns[0]]]}
        if len(self.text_columns) == 2:
            rows["text_b"] = [str(t) for t in table[self.text_columns[1]]]
        rows["labels"] = label_ids(path, raw, self.labels, self.label_column)
        return Dataset.from_dict(rows)


def infer_labels(path: Path, table: Dataset, column: str) -> tuple[str, ...] | None:
    """The sorted label names of the training file, or None (regression) when the column holds floats."""
    dtype = table.features[column].dtype
    if dtype.startswith("float"):
        return None
    values = table[column]
    if "string" in dtype:  # numbers but for a few: a regression file with a typo, not thousands of classes
        as_numbers = [_number(v) for v in values]
        if any(n is not None and not n.is_integer() for n in as_numbers):
            bad = next((i for i, n in enumerate(as_numbers) if n is None), None)
            if bad is None:  # all numbers, some written as text (nan, inf): regression, checked by label_ids
                return None
            raise DataError(f"{row_location(path, bad)}: label {values[bad]!r} in column {column!r} is not a number, "
                            "while other labels are (numbers mean regression)")
    return tuple(str(v) for v in sorted(set(values)))


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def label_ids(path: Path, values: list, labels: tuple[str, ...] | None, column: str) -> list:
    """Class ids by label name, or floats for regression; a value that does not fit names its line."""
    if labels is None:
        out = []
        for row, value in enumerate(values):
            number = _number(str(value)) if not isinstance(value, bool) else None
            if number is None:
                raise DataError(f"{row_location(path, row)}: label {value!r} in column {column!r} is not a number")
            if not math.isfinite(number):  # a NaN score would read as divergence in training
                raise DataError(f"{row_location(path, row)}: label {value!r} in column {column!r} is not a finite "
                                "score")
            out.append(number)
        return out
    ids = {name: i for i, name in enumerate(labels)}
    for row, value in enumerate(values):
        if str(value) not in ids:
            raise DataError(f"{row_location(path, row)}: label {value!r} in column {column!r} is not one of "
                            f"{list(labels)} (the training file's labels, or task.labels)")
    return [ids[str(value)] for value in values]


@dataclass(frozen=True)
class ConllColumns:
    """How your CoNLL-style files look: token and tag columns, the separator, document lines to skip."""

    delimiter: str | None  # None: any run of whitespace
    token_column: int
    tag_column: int  # -1: the last field
    docstart: str | None


@dataclass
class TokenClassificationTask(TokenTagging):
    """Token classification from CoNLL-style column files or from json/jsonl/parquet with token and tag lists."""

    name: str
    files: OwnFiles
    tokens_column: str
    tags_column: str
    conll: ConllColumns
    scheme: str
    max_length: int
    main_metric: str
    labels: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TokenClassificationTask:
        check_scheme(cfg["scheme"])
        _check_main(cfg["main_metric"], TOKEN_METRICS)
        return cls(cfg["name"], OwnFiles.from_config(cfg), cfg["tokens_column"], cfg["tags_column"],
                   ConllColumns(**cfg["conll"]), cfg["scheme"], cfg["max_length"], cfg["main_metric"])

    def load(self, data: DataConfig) -> Splits:
        """Sentences {words, tags}; the tag names come from the training file."""
        return self.files.load(data, self.read)

    def read(self, path: Path, training: bool) -> Dataset:
        """One file: json/jsonl/parquet by their columns, anything else as CoNLL columns."""
        if is_table(path) and path.suffix.lower() != ".tsv":
            words, tags = self._read_table(path, training)
        else:
            c = self.conll
            layout = ColumnLayout(dir="", train="", eval="", delimiter=c.delimiter, columns=None,
                                  token_column=c.token_column, tag_column=c.tag_column, docstart=c.docstart)
            words, tags, starts = read_columns(path, layout)
            if training:
                self.labels = label_list(tags, self.scheme, path)
            else:
                check_known_tags(path, tags, starts, self.labels)
        return Dataset.from_dict({"words": words, "tags": tags})

    def _read_table(self, path: Path, training: bool) -> tuple[list[list[str]], list[list[str]]]:
        table = read_table(path, [self.tokens_column, self.tags_column], lists=[self.tokens_column, self.tags_column])
        check_present(path, table, [self.tokens_column, self.tags_column])
        words = [[str(w) for w in row] for row in table[self.tokens_column]]
        tags = [[str(t) for t in row] for row in table[self.tags_column]]
        for row, (ws, ts) in enumerate(zip(words, tags, strict=True)):
            if len(ws) != len(ts) or not ws:
                raise DataError(f"{row_location(path, row)}: {len(ws)} tokens but {len(ts)} tags "
                                f"(columns {self.tokens_column!r}, {self.tags_column!r})")
        if training:
            self.labels = label_list(tags, self.scheme, path)
        known = set(self.labels)
        for row, sentence in enumerate(tags):
            unseen = [t for t in sentence if t not in known]
            if unseen:
                raise DataError(f"{row_location(path, row)}: tag {unseen[0]!r} does not occur in the training file")
        return words, tags


@dataclass(frozen=True)
class GenerationFilesTask(TextGeneration):
    """Source -> target generation from csv/tsv/json/jsonl/parquet; scored like E2E (all references of a source)."""

    name: str
    files: OwnFiles
    source_column: str
    target_column: str
    separator: str
    max_length: int
    label_smoothing: float
    generation: Generation
    main_metric: str

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GenerationFilesTask:
        _check_main(cfg["main_metric"], GENERATION_METRICS)
        return cls(cfg["name"], OwnFiles.from_config(cfg), cfg["source_column"], cfg["target_column"],
                   cfg["separator"], cfg["max_length"], cfg["label_smoothing"], Generation(**cfg["generation"]),
                   cfg["main_metric"])

    def load(self, data: DataConfig) -> Splits:
        """Rows {source, target}; a held-out dev split keeps every reference of a source together."""
        return self.files.load(data, self.read, group="source")

    def read(self, path: Path, training: bool) -> Dataset:
        table = read_table(path, [self.source_column, self.target_column])
        check_present(path, table, [self.source_column, self.target_column])
        return Dataset.from_dict({"source": [str(s).strip() for s in table[self.source_column]],
                                  "target": [" ".join(str(t).split()) for t in table[self.target_column]]})
