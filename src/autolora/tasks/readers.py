"""Your own data files through `datasets`' local loaders: csv, tsv, json/jsonl and parquet, by suffix.

Errors name the file, the line (or record) and the column: a missing column lists the columns the file
has, a malformed record or a bad value names its line, as Hugging Face's run_glue.py reads --train_file.
"""

from __future__ import annotations

import csv
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from datasets import Dataset

from autolora.errors import DataError
from autolora.files import check_text

# suffix -> (datasets' packaged loader, its options); TSV is split on tabs only, without quoting (as GLUE's).
# Only an empty cell is missing: pandas' default would also read the text NA, N/A, null or nan as missing.
TEXT_CELLS = {"keep_default_na": False, "na_values": [""]}
LOADERS = {
    ".csv": ("csv", TEXT_CELLS),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, **TEXT_CELLS}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def is_table(path: Path) -> bool:
    """Whether datasets' loaders read this file (by suffix)."""
    return path.suffix.lower() in LOADERS


def read_table(path: Path, columns: Sequence[str], lists: Sequence[str] = ()) -> Dataset:
    """The file's records (in memory) through the loader for its suffix; every name in `columns` must be there,
    holding one value per row (numbers or text), or a list of them for the names in `lists`."""
    from datasets import load_dataset
    from datasets.exceptions import DatasetGenerationError
    from datasets.utils import logging as datasets_logging
    from pyarrow import ArrowException

    if not is_table(path):
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(LOADERS)}")
    builder, options = LOADERS[path.suffix.lower()]
    if builder != "parquet":  # pandas and pyarrow report a bad byte without its line, or after a long parse
        check_text(path, DataError)
    level = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # its own log line repeats the error we raise
    try:
        with tempfile.TemporaryDirectory() as cache:  # no Arrow cache of a user's file left in ~/.cache
            table = load_dataset(builder, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True,
                                 **options)
    except DatasetGenerationError as err:
        raise DataError(parse_error(path, err.__cause__ or err)) from None
    except (ArrowException, ValueError) as err:  # a .parquet that is not parquet; a header and no rows
        if "corresponds to no data" in str(err):
            raise DataError(f"{path}: no data rows") from None
        raise DataError(parse_error(path, err)) from None
    finally:
        datasets_logging.set_verbosity(level)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        where = f"{path}:1" if builder == "csv" else str(path)
        raise DataError(f"{where}: no column {', '.join(map(repr, missing))}; the columns are {table.column_names}")
    if len(table) == 0:
        raise DataError(f"{path}: no data rows")
    for column in columns:
        check_kind(path, table, column, listed=column in lists)
    return table


def check_kind(path: Path, table: Dataset, column: str, listed: bool) -> None:
    """A column holds plain values (text, numbers), or lists of them where `listed`: a nested object or list
    would otherwise be trained on as its Python repr, str({'a': 1}). A .json file of one record whose columns
    are all lists is a column-oriented object ({"text": [...], "label": [...]}): named as such."""
    from datasets import LargeList, List, Sequence, Value

    feature = table.features[column]
    is_list = isinstance(feature, List | LargeList | Sequence)
    ok = (is_list and isinstance(feature.feature, Value)) if listed else isinstance(feature, Value)
    if ok:
        return
    if (not listed and is_list and len(table) == 1 and path.suffix.lower() == ".json"
            and all(isinstance(f, List | LargeList | Sequence) for f in table.features.values())):
        raise DataError(f"{path}: one JSON object of columns ({{{column!r}: [...], ...}}); give one object per "
                        "row: a JSON list of records, or JSON lines (.jsonl)")
    kind = ("a list" if is_list else "an object") if not isinstance(feature, Value) else "a single value"
    want = "a list of tokens or tags" if listed else "one text or number"
    row = next((i for i, value in enumerate(table[column]) if value is not None), 0)
    raise DataError(f"{row_location(path, row)}: column {column!r} holds {kind} ({str(table[column][row])[:60]}), "
                    f"not {want} per row")


def parse_error(path: Path, err: BaseException) -> str:
    """The loader's error as 'file:line: message' (pandas counts lines from 1, pyarrow's JSON rows from 0)."""
    message = " ".join(str(err).split())
    line = re.search(r"\bline (\d+)", message)
    if line:
        fields = re.search(r"Expected (\d+) fields in line \d+, saw (\d+)", message)
        detail = f"expected {fields.group(1)} fields, found {fields.group(2)}" if fields else message
        return f"{path}:{line.group(1)}: {detail}"
    row = re.search(r"\bin row (\d+)", message)
    if row and path.suffix.lower() == ".jsonl":
        return f"{path}:{int(row.group(1)) + 1}: {message}"
    return f"{path}: {message}"


def row_location(path: Path, row: int) -> str:
    """Where data row `row` (0-based) of a table file starts: 'file:LINE', or 'file, record N'."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            next(reader, None)  # the header
            start = reader.line_num + 1
            index = 0
            for record in reader:
                if record:  # pandas skips blank lines
                    if index == row:
                        return f"{path}:{start}"
                    index += 1
                start = reader.line_num + 1
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            lines = [n for n, line in enumerate(f, start=1) if line.strip()]
        if row < len(lines):
            return f"{path}:{lines[row]}"
    return f"{path}, record {row + 1}"


def first_missing(table: Dataset, column: str) -> int | None:
    """The first row whose value in `column` is missing (None or NaN) or blank text, or None."""
    for index, value in enumerate(table[column]):
        if value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str)
                                                                               and not value.strip()):
            return index
    return None


def check_present(path: Path, table: Dataset, columns: Sequence[str]) -> None:
    """No missing (empty) or blank value in these columns: a blank generation target would train on EOS alone
    and fail the scoring after training. The first one found is named by file, line and column."""
    for column in columns:
        row = first_missing(table, column)
        if row is not None:
            value = table[column][row]
            what = "blank" if isinstance(value, str) and value else "empty"
            raise DataError(f"{row_location(path, row)}: column {column!r} is {what}")


def hold_out(n: int, fraction: float, seed: int, groups: Sequence | None = None) -> tuple[list[int], list[int]]:
    """Seeded (kept, held-out) row indices; rows of one group (e.g. one source with several references) stay
    together, so no held-out input is seen in training."""
    keys = list(range(n)) if groups is None else list(dict.fromkeys(groups))
    order = np.random.default_rng(seed).permutation(len(keys))
    n_out = min(len(keys) - 1, max(1, round(len(keys) * fraction)))
    if n_out < 1:
        raise DataError(f"{n} training row(s): too few to hold out a dev split (give task.dev_file)")
    out_keys = {keys[i] for i in order[:n_out]}
    member = range(n) if groups is None else groups
    kept = [i for i, key in enumerate(member) if key not in out_keys]
    held = [i for i, key in enumerate(member) if key in out_keys]
    return kept, held
