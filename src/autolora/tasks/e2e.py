"""E2E NLG (and WebNLG-style data-to-text): meaning representation -> text with a decoder LM.

Training text = MR + separator + reference + EOS, loss on the reference tokens only (label smoothing as
in the LoRA recipe). Evaluation generates once per unique MR of the evaluation split (beam search with
the adapters active, left-padded batches) and scores against all of that MR's references with the
challenge's metrics (metrics.e2e_scores). Local files are the official CSVs (quote-aware parsing: refs
hold commas, quotes and, twice in trainset.csv, a line break).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import Tensor, nn
from tqdm.auto import tqdm

from autolora.engine.batch import Batch
from autolora.errors import DataError
from autolora.files import read_text
from autolora.predictions import generation_text
from autolora.tasks import metrics
from autolora.tasks.base import DataConfig, Splits, load_hub, local_folder, truncate
from autolora.typecheck import check_types

IGNORE = -100  # label id the loss skips (prompt and padding)


@dataclass(frozen=True)
class CsvLayout:
    """The task's CSV files under data.data_dir/<dir>/ and their column names."""

    dir: str
    train: str
    eval: str  # the split that is scored (E2E: testset_w_refs.csv, 630 unique MRs)
    source: str  # column holding the meaning representation
    target: str  # column holding one reference


@dataclass(frozen=True)
class HubCsv:
    path: str
    name: str | None
    source: str
    target: str
    eval_split: str


@dataclass(frozen=True)
class Generation:
    """Decoding settings (LoRA paper's E2E recipe)."""

    num_beams: int
    length_penalty: float
    no_repeat_ngram_size: int
    max_new_tokens: int
    batch_size: int

    def __post_init__(self):
        check_types(self, "task.generation")
        for key in ("num_beams", "max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"task.generation.{key} must be >= 1, got {getattr(self, key)}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"task.generation.no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"task.generation.length_penalty must be finite, got {self.length_penalty}")


def read_csv(path: Path, layout: CsvLayout) -> dict[str, list[str]]:
    """Rows of (source, target); errors name the file and the line of the offending record."""
    out: dict[str, list[str]] = {"source": [], "target": []}
    reader = csv.reader(io.StringIO(read_text(path, DataError), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file")
        missing = [c for c in (layout.source, layout.target) if c not in header]
        if missing:
            raise DataError(f"{path}:1: missing column(s) {missing}; the header has {header}")
        src, tgt = header.index(layout.source), header.index(layout.target)
        for record in reader:
            if len(record) != len(header):
                raise DataError(f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(record)}")
            if not record[src].strip() or not record[tgt].strip():
                raise DataError(f"{path}:{reader.line_num}: "
                                f"empty {layout.source if not record[src].strip() else layout.target}")
            out["source"].append(record[src].strip())
            out["target"].append(" ".join(record[tgt].split()))  # embedded line breaks, double spaces
    except csv.Error as err:  # e.g. a field over the csv module's size limit
        raise DataError(f"{path}:{reader.line_num}: {err}") from None
    if not out["source"]:
        raise DataError(f"{path}: no data rows")
    return out


class TextGeneration:
    """The family: rows {source, target} -> a causal LM trained on source + separator + target, scored by
    generating once per unique source (metrics.e2e_scores). E2E and your own files (tasks/own.py) share it;
    subclasses set name, separator, max_length, label_smoothing and generation."""

    head = "causal_lm"
    main_metric = "bleu"
    num_labels = 0
    separator: str
    max_length: int
    label_smoothing: float
    generation: Generation

    def __post_init__(self):  # the subclasses' dataclass __init__ calls it: E2E and your own files alike
        if not (isinstance(self.label_smoothing, int | float) and 0 <= self.label_smoothing < 1):
            raise ValueError(f"task.label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")

    def prompt_ids(self, tokenizer, source: str) -> list[int]:
        return tokenizer(source + self.separator, add_special_tokens=False)["input_ids"]

    def encode(self, split: Dataset, tokenizer) -> Dataset:
        """input_ids = prompt + ' ' + reference + EOS; labels = -100 on the prompt (loss on the reference)."""

        def tokenize(rows):
            out = {"input_ids": [], "labels": []}
            for source, target in zip(rows["source"], rows["target"], strict=True):
                prompt = self.prompt_ids(tokenizer, source)
                answer = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids = (prompt + answer)[: self.max_length]
                out["input_ids"].append(ids)
                out["labels"].append(([IGNORE] * len(prompt) + answer)[: self.max_length])
            return out

        encoded = Dataset.from_dict(tokenize(split[:]))  # not Dataset.map: it pickles the tokenizer to fingerprint
        empty = [i for i, labels in enumerate(encoded["labels"]) if all(t == IGNORE for t in labels)]
        if empty:
            raise DataError(f"task.max_length={self.max_length} leaves no reference token in {len(empty)} training "
                            f"rows (e.g. row {empty[0] + 1}: {split[empty[0]]['source']!r}); raise task.max_length")
        return encoded

    def collate(self, tokenizer) -> Callable[[list[dict]], Batch]:
        """Right padding (training): pad id, attention 0, label -100."""

        def collate(rows: list[dict]) -> Batch:
            width = max(len(r["input_ids"]) for r in rows)
            pad = lambda seq, value: list(seq) + [value] * (width - len(seq))  # noqa: E731
            return {
                "input_ids": torch.tensor([pad(r["input_ids"], tokenizer.pad_token_id) for r in rows]),
                "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
                "labels": torch.tensor([pad(r["labels"], IGNORE) for r in rows]),
            }

        return collate

    def loss(self, outputs: Any, batch: Batch) -> Tensor:
        """Next-token cross-entropy on the reference tokens, label smoothing as configured, in float32."""
        logits = outputs.logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE,
                               label_smoothing=self.label_smoothing)

    def eval_items(self, split: Dataset, tokenizer) -> list[str]:
        """The units predictions are made for: each unique source (meaning representation) once."""
        return list(dict.fromkeys(split["source"]))

    @torch.no_grad()
    def predict(self, model: nn.Module, items: list[str], tokenizer, *, device: torch.device, autocast: Callable,
                batch_size: int) -> list[str]:
        """The generated text for each source (beam search as configured)."""
        return self.generate(model, tokenizer, items, device=device, autocast=autocast)

    def score(self, split: Dataset, items: list[str], predictions: list[str]) -> tuple[dict[str, float], str]:
        """Each source's generation scored against all its references; the metrics and the predictions file's
        text (source, generated text)."""
        references: dict[str, list[str]] = {}
        for source, target in zip(split["source"], split["target"], strict=True):
            references.setdefault(source, []).append(target)
        scores = metrics.e2e_scores(predictions, [references[s] for s in items])
        return scores, generation_text(items, predictions)

    def generate(self, model: nn.Module, tokenizer, sources: list[str], *, device, autocast) -> list[str]:
        """Left-padded batches through model.generate with the configured beam search."""
        was_training = model.training
        model.eval()
        g = self.generation
        outputs = []
        for start in tqdm(range(0, len(sources), g.batch_size), desc="generate", unit="batch"):
            prompts = [self.prompt_ids(tokenizer, s) for s in sources[start : start + g.batch_size]]
            width = max(map(len, prompts))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
            with autocast():
                generated = model.generate(
                    input_ids=ids, attention_mask=mask, num_beams=g.num_beams, length_penalty=g.length_penalty,
                    no_repeat_ngram_size=g.no_repeat_ngram_size, max_new_tokens=g.max_new_tokens, do_sample=False,
                    early_stopping=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row in generated[:, width:]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                outputs.append(" ".join(text.split("\n")[0].split()))
        model.train(was_training)
        return outputs


@dataclass(frozen=True)
class GenerationTask(TextGeneration):
    """E2E NLG (official CSVs or the hub copy)."""

    name: str
    local: CsvLayout
    hub: HubCsv
    separator: str
    max_length: int
    label_smoothing: float
    generation: Generation

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GenerationTask:
        return cls(cfg["name"], CsvLayout(**cfg["local"]), HubCsv(**cfg["hub"]), cfg["separator"], cfg["max_length"],
                   cfg["label_smoothing"], Generation(**cfg["generation"]))

    def load(self, data: DataConfig) -> Splits:
        """Train rows and test rows (one per reference) from local CSVs or the hub."""
        located = local_folder(data, self.name, self.local.dir, sample=None)
        if located is None:
            parts = load_hub(self.name, self.hub.path, self.hub.name, self.local.dir)
            pick = lambda split: Dataset.from_dict({"source": list(split[self.hub.source]),  # noqa: E731
                                                    "target": list(split[self.hub.target])})
            train, test, origin = pick(parts["train"]), pick(parts[self.hub.eval_split]), f"hub {self.hub.path}"
            files = ()
        else:
            folder, origin = located
            files = (folder / self.local.train, folder / self.local.eval)
            train = Dataset.from_dict(read_csv(files[0], self.local))
            test = Dataset.from_dict(read_csv(files[1], self.local))
        return Splits(truncate(train, data.max_train_samples), None, origin, test=truncate(test, data.max_eval_samples),
                      files=files)
