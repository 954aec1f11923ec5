"""Sequence labelling (NER) from CoNLL-style column files: CoNLL-2003, BioNLP13CG, JNLPBA.

One token per line, the tag in a configured column, blank lines between sentences, optional
-DOCSTART- document lines (skipped). Labels come from the training file; a tag in the evaluation file
that training never saw is an error. Each word is labelled on its first sub-token (the rest are
ignored by the loss); sentences longer than max_length are split into windows of whole words, and
predictions are stitched back per word. Entity scores: metrics.entity_scores (conlleval's counting as
`f1`, seqeval's strict mode in the data's scheme as `f1_strict`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import DataCollatorForTokenClassification

from autolora.engine.batch import Batch, model_inputs
from autolora.errors import DataError
from autolora.files import read_text
from autolora.predictions import tagging_text
from autolora.tasks.base import DataConfig, Splits, load_hub, local_folder, truncate

IGNORE = -100
SCHEMES = ("IOB2", "IOBES", "IOE2")


def check_scheme(scheme: str) -> str:
    """task.scheme, one of the tagging schemes seqeval scores."""
    if scheme not in SCHEMES:
        raise ValueError(f"task.scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


@dataclass(frozen=True)
class ColumnLayout:
    """Where a CoNLL-style dataset keeps its files and its columns."""

    dir: str
    train: str
    eval: str  # the split that is scored
    delimiter: str | None  # " " (CoNLL-2003) or "\t" (BioNLP/JNLPBA); None: any run of whitespace
    columns: int | None  # fields per token line; None: any number that holds token_column and tag_column
    token_column: int
    tag_column: int
    docstart: str | None  # first field of a document line to skip, e.g. "-DOCSTART-"

    @property
    def min_fields(self) -> int:
        """Fields a token line needs: two at least, and enough for both columns (negative: from the end)."""
        return max(2, *(c + 1 if c >= 0 else -c for c in (self.token_column, self.tag_column)))


def read_columns(path: Path, layout: ColumnLayout) -> tuple[list[list[str]], list[list[str]], list[int]]:
    """(sentences of words, sentences of tags, the line where each sentence starts)."""
    text = read_text(path, DataError)
    words, tags, starts = [], [], []
    current_words, current_tags, start = [], [], 0

    def flush():
        if current_words:
            words.append(list(current_words))
            tags.append(list(current_tags))
            starts.append(start)
            current_words.clear()
            current_tags.clear()

    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            flush()
            continue
        fields = line.split(layout.delimiter)
        if layout.docstart is not None and fields[0] == layout.docstart:
            flush()
            continue
        if layout.columns is not None and len(fields) != layout.columns:
            raise DataError(f"{path}:{lineno}: expected {layout.columns} fields separated by "
                            f"{layout.delimiter!r}, found {len(fields)}")
        if len(fields) < layout.min_fields:
            raise DataError(f"{path}:{lineno}: expected a token and a tag, found {len(fields)} field(s): {line!r}")
        if not current_words:
            start = lineno
        current_words.append(fields[layout.token_column])
        current_tags.append(fields[layout.tag_column])
    flush()
    if not words:
        raise DataError(f"{path}: no sentences")
    return words, tags, starts


PREFIXES = {"IOB2": "BI", "IOBES": "BIES", "IOE2": "IE"}  # the tag prefixes of each scheme (then "-TYPE")


def label_list(tags: list[list[str]], scheme: str, path: Path) -> list[str]:
    """'O' first, then entity tags sorted by type and prefix (a stable id mapping). Every tag must be of the
    scheme (O, or PREFIX-TYPE): seqeval would otherwise fail on it, or count it as no entity, after training."""
    seen = {tag for sentence in tags for tag in sentence}
    for tag in sorted(seen):
        prefix, dash, kind = tag.partition("-")
        if tag != "O" and not (dash and kind and len(prefix) == 1 and prefix in PREFIXES[scheme]):
            line = next((i for i, sentence in enumerate(tags) if tag in sentence), 0) + 1
            raise DataError(f"{path}: sentence {line}: tag {tag!r} is not of the {scheme} scheme (O, or one of "
                            f"{', '.join(PREFIXES[scheme])} then '-' and a type); fix the file or set task.scheme")
    return ["O", *sorted(seen - {"O"}, key=lambda t: (t[2:], t[:2]))] if "O" in seen else sorted(seen)


def check_known_tags(path: Path, tags: list[list[str]], starts: list[int], labels: list[str]) -> None:
    """Every tag of an evaluation file must occur in training (the head has no id for it otherwise)."""
    known = set(labels)
    for sentence, first_line in zip(tags, starts, strict=True):
        for offset, tag in enumerate(sentence):
            if tag not in known:
                raise DataError(f"{path}:{first_line + offset}: tag {tag!r} does not occur in the training file")


def visible(words: list[str], tokenizer) -> list[str]:
    """The words as the model reads them: one that the tokenizer turns into no sub-token at all (a zero-width or
    control character, which BERT's tokenizer drops) is read as the unknown token instead, so every word keeps
    its own label position and prediction; the predictions file still shows the word itself."""
    stand_in = tokenizer.unk_token or tokenizer.eos_token
    return [word if tokenizer(word, add_special_tokens=False)["input_ids"] else stand_in for word in words]


class TokenTagging:
    """The family: rows {words, tags} -> a token classifier scored with seqeval entity F1. CoNLL-style NER
    sets and your own files (tasks/own.py) share it; subclasses set name, labels, scheme, max_length."""

    head = "token_classification"
    main_metric = "f1"
    labels: list[str]  # tag names in class-id order ('O' first), from the training split
    scheme: str  # seqeval scheme: IOB2, IOBES, IOE2
    max_length: int

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def windows(self, words: list[str], tokenizer) -> list[tuple[int, int]]:
        """[start, stop) word ranges whose sub-tokens (plus specials) fit max_length; never splits a word."""
        budget = self.max_length - tokenizer.num_special_tokens_to_add(pair=False)
        counts = [len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words]  # >= 1: see visible
        spans, start, used = [], 0, 0
        for i, count in enumerate(counts):
            if used + count > budget and i > start:
                spans.append((start, i))
                start, used = i, 0
            used += count
        spans.append((start, len(words)))
        return spans

    def encode(self, split: Dataset, tokenizer) -> Dataset:
        """One row per window: input_ids, labels on first sub-tokens (-100 elsewhere), sentence/word offsets."""
        label_ids = {label: i for i, label in enumerate(self.labels)}
        rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "sentence": [], "first_word": []}
        for index, (words, tags) in enumerate(zip(split["words"], split["tags"], strict=True)):
            words = visible(words, tokenizer)
            for start, stop in self.windows(words, tokenizer):
                encoded = tokenizer(words[start:stop], is_split_into_words=True, truncation=True,
                                    max_length=self.max_length)
                labels, previous = [], None
                for word in encoded.word_ids():
                    labels.append(IGNORE if word is None or word == previous else label_ids[tags[start + word]])
                    previous = word
                if sum(label != IGNORE for label in labels) != stop - start:  # a prediction per word, in order
                    raise DataError(f"sentence {index + 1}: the tokenizer gives no first sub-token to some of words "
                                    f"{start + 1}-{stop}, so their predictions would shift onto the next words")
                rows["input_ids"].append(encoded["input_ids"])
                rows["attention_mask"].append(encoded["attention_mask"])
                rows["labels"].append(labels)
                rows["sentence"].append(index)
                rows["first_word"].append(start)
        return Dataset.from_dict(rows)

    def collate(self, tokenizer) -> Callable[[list[dict]], Batch]:
        """Pad inputs and labels (-100); bookkeeping columns are dropped."""
        pad = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE, return_tensors="pt")

        def collate(rows: list[dict]) -> Batch:
            return dict(pad([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows]))

        return collate

    def loss(self, outputs: Any, batch: Batch) -> Tensor:
        """Token cross-entropy over first sub-tokens, in float32."""
        return F.cross_entropy(outputs.logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def eval_items(self, split: Dataset, tokenizer) -> Dataset:
        """The units predictions are made for: the encoded windows of the dev sentences."""
        return self.encode(split, tokenizer)

    @torch.no_grad()
    def predict(self, model: nn.Module, items: Dataset, tokenizer, *, device: torch.device, autocast: Callable,
                batch_size: int) -> list[list[int]]:
        """Per window, the predicted label id of each word it labels (its first sub-token's argmax)."""
        loader = DataLoader(items, batch_size=batch_size, collate_fn=self.collate(tokenizer))
        was_training = model.training
        model.eval()
        predicted: list[list[int]] = []
        for batch in loader:
            with autocast():
                logits = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
            best = logits.argmax(-1).cpu().numpy()
            for row_best, row_labels in zip(best, batch["labels"].numpy(), strict=True):
                predicted.append(row_best[row_labels != IGNORE].tolist())  # one per word of the window
        model.train(was_training)
        return predicted

    def score(self, split: Dataset, items: Dataset, predictions: list[list[int]]) -> tuple[dict[str, Any], str]:
        """Entity P/R/F1 (conlleval and strict), per-type table, token accuracy; the predictions file's text."""
        from autolora.tasks import metrics

        words, gold = list(split["words"]), list(split["tags"])
        guesses: list[list[str]] = [["O"] * len(w) for w in words]
        for sentence, first, labels in zip(items["sentence"], items["first_word"], predictions, strict=True):
            guesses[sentence][first : first + len(labels)] = [self.labels[i] for i in labels]
        scores = metrics.entity_scores(gold, guesses, self.scheme)
        return scores, tagging_text(words, gold, guesses)


@dataclass
class NerTask(TokenTagging):
    """A CoNLL-style NER dataset; `labels` is fixed by load() from the training file."""

    name: str
    local: ColumnLayout
    hub: Mapping[str, Any] | None  # {path, name, tokens, tags, eval_split}; None: no hub copy configured
    scheme: str
    max_length: int
    labels: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> NerTask:
        return cls(cfg["name"], ColumnLayout(**cfg["local"]), cfg["hub"] and dict(cfg["hub"]),
                   check_scheme(cfg["scheme"]),
                   cfg["max_length"])

    def load(self, data: DataConfig) -> Splits:
        """Sentences from local column files (or the hub); labels from the training split; scored on test."""
        located = local_folder(data, self.name, self.local.dir, sample=None)
        if located is None:
            train, test, origin = self._load_hub()
            files = ()
        else:
            folder, origin = located
            train_words, train_tags, _ = read_columns(folder / self.local.train, self.local)
            self.labels = label_list(train_tags, self.scheme, folder / self.local.train)
            eval_path = folder / self.local.eval
            files = (folder / self.local.train, eval_path)
            eval_words, eval_tags, starts = read_columns(eval_path, self.local)
            check_known_tags(eval_path, eval_tags, starts, self.labels)
            train = Dataset.from_dict({"words": train_words, "tags": train_tags})
            test = Dataset.from_dict({"words": eval_words, "tags": eval_tags})
        return Splits(truncate(train, data.max_train_samples), None, origin, test=truncate(test, data.max_eval_samples),
                      files=files)

    def _load_hub(self):
        if self.hub is None:
            raise DataError(f"{self.name} has no hub copy configured: "
                            f"set data.data_dir=<folder with {self.local.dir}/>")
        parts = load_hub(self.name, self.hub["path"], self.hub["name"], self.local.dir)
        names = parts["train"].features[self.hub["tags"]].feature.names
        self.labels = list(names)

        def standard(split):
            return Dataset.from_dict({"words": list(split[self.hub["tokens"]]),
                                      "tags": [[names[i] for i in row] for row in split[self.hub["tags"]]]})

        return standard(parts["train"]), standard(parts[self.hub["eval_split"]]), f"hub {self.hub['path']}"
