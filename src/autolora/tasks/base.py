"""What every task provides: data splits, tokenisation, the loss, the evaluation; plus shared helpers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from autolora.engine.batch import Batch
from autolora.errors import DataError
from autolora.files import sha256_file
from autolora.typecheck import check_types

if TYPE_CHECKING:  # the search loop imports this module; it must not need `datasets`
    from datasets import Dataset

HEADS = ("sequence_classification", "token_classification", "causal_lm")
DATA_SOURCES = ("auto", "local", "hub", "sample")
SELECT_ON = ("dev", "heldout")


@dataclass(frozen=True)
class DataConfig:
    """The `data` config node: where the data comes from and how much of it."""

    source: str  # auto: data_dir if set, else the packaged sample if the task has one, else the hub
    data_dir: str | None
    max_train_samples: int | None
    max_eval_samples: int | None
    # Model selection never looks at the reported split: select_on=heldout trains on train minus a seeded
    # heldout_fraction of it and scores those held-out rows in place of dev/test (same rows for every run seed).
    select_on: str = "dev"  # dev (the reported split) | heldout
    heldout_fraction: float = 0.1
    heldout_seed: int = 0

    def __post_init__(self):
        check_types(self, "data")
        if self.source not in DATA_SOURCES:
            raise ValueError(f"data.source must be one of {DATA_SOURCES}, got {self.source!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"data.select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"data.heldout_fraction must lie in (0, 1), got {self.heldout_fraction}")
        if not 0 <= self.heldout_seed < 2**32:  # NumPy's seed range
            raise ValueError(f"data.heldout_seed must lie in [0, 2^32), got {self.heldout_seed}")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"data.{key} must be >= 1 or null, got {value}")


@dataclass
class Splits:
    """Raw (untokenised) splits; `origin` says where they came from, for the summary; `files` are the files
    they were read from (none for the hub), whose fingerprint a resumed run compares.

    A run scores every evaluation split it has (dev, test); the last one is its headline result, so
    NER and E2E (scored on their test files) say `test`, not `dev`.
    """

    train: Dataset
    dev: Dataset | None
    origin: str
    test: Dataset | None = None
    files: tuple[Path, ...] = ()

    def scored(self) -> dict[str, Dataset]:
        """Evaluation split name -> rows, dev before test; the last one is the run's headline result."""
        found = {name: split for name, split in (("dev", self.dev), ("test", self.test)) if split is not None}
        if not found:
            raise DataError(f"{self.origin}: no evaluation split (a dev or a test file)")
        return found


def select_on_heldout(splits: Splits, data: DataConfig) -> Splits:
    """data.select_on=heldout: train on the rest of train, score a seeded share of it as `dev`; the task's own
    dev and test splits are dropped, so selecting learning rates or budgets on this run never sees them."""
    if data.select_on == "dev":
        return splits
    order = np.random.default_rng(data.heldout_seed).permutation(len(splits.train))
    n_out = round(len(order) * data.heldout_fraction)
    if not 1 <= n_out < len(order):
        raise DataError(f"{splits.origin}: {len(order)} training row(s) are too few to hold out "
                        f"data.heldout_fraction={data.heldout_fraction:g} of them")
    held, kept = sorted(order[:n_out].tolist()), sorted(order[n_out:].tolist())
    dev = truncate(splits.train.select(held), data.max_eval_samples)
    return Splits(splits.train.select(kept), dev, f"{splits.origin} (train minus {n_out} held-out rows scored as dev)",
                  files=splits.files)


def fingerprint(splits: Splits) -> dict[str, str]:
    """What the data is, to notice a change between a kill and a resume: the sha256 of each file read, or of
    the rows themselves (Arrow stream bytes) for data read from no file (the hub, the datasets cache)."""
    if splits.files:
        return {str(Path(path).resolve()): sha256_file(Path(path)) for path in splits.files}
    return {f"{splits.origin} ({name} split)": _sha256_rows(split) for name, split in
            (("train", splits.train), ("dev", splits.dev), ("test", splits.test)) if split is not None}


def _sha256_rows(split: Dataset) -> str:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = split.data.table  # the rows before any select(): the data as loaded
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


class Task(Protocol):
    """The interface run.py relies on; one implementation per dataset family (tasks/glue.py, ...)."""

    name: str
    head: str  # one of HEADS: which AutoModelFor... class the backbone needs
    num_labels: int
    main_metric: str
    max_length: int

    def load(self, data: DataConfig) -> Splits: ...

    def encode(self, split: Dataset, tokenizer) -> Dataset: ...

    def collate(self, tokenizer) -> Callable[[list[dict]], Batch]: ...

    def loss(self, outputs: Any, batch: Batch) -> Tensor: ...

    def eval_items(self, split: Dataset, tokenizer) -> Sequence:
        """What predictions are made for (encoded rows, windows, unique sources), in a fixed order."""

    def predict(self, model: nn.Module, items: Sequence, tokenizer, *, device: torch.device, autocast: Callable,
                batch_size: int) -> list:
        """One prediction per item; data-parallel runs call it on a shard (every N-th item) per process."""

    def score(self, split: Dataset, items: Sequence, predictions: list) -> tuple[dict[str, float | None], str | None]:
        """Metrics on a raw evaluation split from all its predictions, plus the predictions as text (or None)."""


def resolve_source(data: DataConfig, has_sample: bool) -> str:
    """The concrete data source for `auto`: local files, the packaged sample, or the hub."""
    if data.source != "auto":
        return data.source
    if data.data_dir is not None:
        return "local"
    return "sample" if has_sample else "hub"


def local_folder(data: DataConfig, task_name: str, subdir: str, sample: str | None) -> tuple[Path, str] | None:
    """(folder holding the task's files, a description for the summary), or None for the hub.

    The one data-folder rule: data.data_dir is the folder holding every dataset's folder (glue/SST-2/,
    conll2003/, e2e/, ...: the DATA_DIR of `make reproduce`); a wrong folder gets a "did you mean".
    """
    source = resolve_source(data, sample is not None)
    if source == "hub":
        return None
    if source == "sample":
        if sample is None:
            raise DataError(f"{task_name} ships no packaged sample: set data.data_dir=... or data.source=hub")
        folder = sample_dir() / sample
        return folder, f"packaged sample {folder}"
    if data.data_dir is None:
        raise DataError(f"data.source=local needs data.data_dir=<folder holding {subdir}/>")
    root = Path(data.data_dir).expanduser()
    folder = root / subdir
    if folder.is_dir():
        return folder, f"local {folder}"
    better = folder_with(root, subdir)
    hint = f"; did you mean data.data_dir={better}?" if better is not None else ""
    first, *rest = Path(subdir).parts
    if rest and (root / Path(*rest)).is_dir() and better is None:
        # The glue/ folder itself under another name (download_glue_data.py writes glue_data/): refused like
        # every wrong folder, so that data.data_dir means one thing for every task, sweep and make reproduce.
        hint = (f"; it holds {Path(*rest)}/ itself: rename or link it as <folder>/{first}/ and set "
                "data.data_dir=<folder>")
    raise DataError(f"{folder}: no such folder (data.data_dir={data.data_dir} must hold {subdir}/){hint}")


def folder_with(root: Path, subdir: str) -> Path | None:
    """The nearest folder above or below root (two levels) that holds subdir: for the "did you mean" hint."""
    candidates = [*list(root.resolve().parents)[:3]]
    if root.is_dir():
        children = [c for c in sorted(root.iterdir()) if c.is_dir()]
        candidates += children + [g for c in children for g in sorted(c.iterdir()) if g.is_dir()]
    return next((c for c in candidates if (c / subdir).is_dir()), None)


def data_file(data: DataConfig, key: str, value: str) -> Path:
    """One of your own data files (task.train_file, ...): relative to data.data_dir when set, else to the
    working directory; a missing file names the key and, where it can, the file meant."""
    given = Path(value).expanduser()
    path = given if given.is_absolute() or data.data_dir is None else Path(data.data_dir).expanduser() / given
    if path.is_file():
        return path
    guesses = [given, *(p / given.name for p in (path.parent, Path.cwd()) if p.is_dir())]
    if path.parent.is_dir():
        guesses += sorted(p for p in path.parent.iterdir() if p.stem == given.stem and p.is_file())
    better = next((g for g in guesses if g.is_file() and g.resolve() != path.resolve()), None)
    hint = f"; did you mean {better}?" if better is not None else ""
    where = f" (data.data_dir={data.data_dir})" if data.data_dir is not None and not given.is_absolute() else ""
    raise DataError(f"task.{key}={value}: {path} is not a file{where}{hint}")


def load_hub(task_name: str, path: str, name: str | None, local_dir: str):
    """The hub copy of a task's data (or the local datasets cache of it); an unreachable hub, offline mode
    without a cached copy, or an unknown dataset id is one DataError saying what to set instead."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetsError

    try:
        return load_dataset(path, name)
    except (OSError, DatasetsError) as err:  # ConnectionError, OfflineModeIsEnabled, DatasetNotFoundError, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{task_name}: no data.data_dir given, so the data comes from the hub ({path}), which gave "
                        f"no copy ({reason}); set data.data_dir=<folder holding {local_dir}/>") from None


def sample_dir() -> Path:
    """The data shipped inside the package (a small slice of SST-2, see data/README.md)."""
    return Path(__file__).resolve().parent.parent / "data"


def search_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of n training rows into D_tr and D_val index lists (docs/method.md §2; both non-empty)."""
    if n < 2:
        raise DataError(f"the training split has {n} row(s): the search needs at least 2 (one per side)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def truncate(split: Dataset, limit: int | None) -> Dataset:
    """The first `limit` rows (data.max_*_samples), or the split unchanged."""
    return split if limit is None or limit >= len(split) else split.select(range(limit))
