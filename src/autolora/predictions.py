"""predictions.jsonl: a run's predictions on its headline split, in a format the text it holds cannot break.

The first line is a header, {"predictions": KIND, "version": 1, "count": N}; then N lines, one JSON object each:
- generation: {"source": ..., "generated": ...} per unique source;
- token_classification: {"words": [...], "gold": [...], "predicted": [...]} per sentence, one tag per word.
JSON escapes newlines and tabs inside strings, so a source or a token holding them stays one record; the count
makes a cut-off file detectable. `read` is the one checked reader (rescore, the report); it also reads the
predictions.txt of runs from before this format (TSV for generation, `word gold predicted` lines for NER),
which has neither protection.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autolora.files import read_text
from autolora.layout import LEGACY_PREDICTIONS, PREDICTIONS

VERSION = 1
FIELDS = {"generation": {"source": str, "generated": str},
          "token_classification": {"words": list, "gold": list, "predicted": list}}


@dataclass(frozen=True)
class Predictions:
    """What a predictions file holds: its kind, its records, and the file they came from."""

    kind: str  # generation | token_classification
    records: list[dict[str, Any]]
    path: Path


def to_jsonl(kind: str, records: Sequence[dict[str, Any]]) -> str:
    """The file's text: the header, then one JSON object per record (UTF-8 kept as is)."""
    lines = [{"predictions": kind, "version": VERSION, "count": len(records)}, *records]
    return "".join(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n" for line in lines)


def generation_text(sources: Sequence[str], generated: Sequence[str]) -> str:
    """One record per source with its generated text."""
    return to_jsonl("generation", [{"source": s, "generated": g} for s, g in zip(sources, generated, strict=True)])


def tagging_text(words: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                 predicted: Sequence[Sequence[str]]) -> str:
    """One record per sentence: its words, gold tags and predicted tags."""
    return to_jsonl("token_classification", [{"words": list(w), "gold": list(g), "predicted": list(p)}
                                             for w, g, p in zip(words, gold, predicted, strict=True)])


def read(folder: Path, error: type[Exception] = ValueError) -> Predictions:
    """The predictions of the run in `folder` (predictions.jsonl, else an older run's predictions.txt), checked:
    every line, field and count; `error` names the file and line."""
    path = Path(folder) / PREDICTIONS
    if not path.exists() and (Path(folder) / LEGACY_PREDICTIONS).exists():
        return _read_legacy(Path(folder) / LEGACY_PREDICTIONS, error)
    lines = read_text(path, error).split("\n")
    if lines[-1] == "":
        lines.pop()
    header = _json_line(path, 1, lines[0], error)
    kind = header.get("predictions")
    if kind not in FIELDS or header.get("version") != VERSION or not _is_count(header.get("count")):
        raise error(f"{path}:1: not a predictions header (expected {{\"predictions\": "
                    f"{' or '.join(map(repr, FIELDS))}, \"version\": {VERSION}, \"count\": N}})")
    records = [_record(path, lineno, line, kind, error) for lineno, line in enumerate(lines[1:], start=2)]
    if len(records) != header["count"]:
        raise error(f"{path}: the header announces {header['count']} records, the file holds {len(records)} "
                    "(cut off or edited)")
    return Predictions(kind, records, path)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_line(path: Path, lineno: int, line: str, error: type[Exception]) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{lineno}: not a JSON line ({err.msg}, column {err.colno})") from None
    if not isinstance(value, dict):
        raise error(f"{path}:{lineno}: expected a JSON object, found {type(value).__name__}")
    return value


def _record(path: Path, lineno: int, line: str, kind: str, error: type[Exception]) -> dict[str, Any]:
    record = _json_line(path, lineno, line, error)
    fields = FIELDS[kind]
    if set(record) != set(fields):
        raise error(f"{path}:{lineno}: expected the fields {sorted(fields)}, found {sorted(record)}")
    for name, kind_of in fields.items():
        value = record[name]
        if not isinstance(value, kind_of) or (kind_of is list and not all(isinstance(v, str) for v in value)):
            raise error(f"{path}:{lineno}: {name} must be {'a list of strings' if kind_of is list else 'a string'}")
    if kind == "token_classification" and not len(record["words"]) == len(record["gold"]) == len(record["predicted"]):
        raise error(f"{path}:{lineno}: {len(record['words'])} words, {len(record['gold'])} gold and "
                    f"{len(record['predicted'])} predicted tags (one tag per word expected)")
    return record


def _read_legacy(path: Path, error: type[Exception]) -> Predictions:
    """An older run's predictions.txt: a `source<TAB>generated` table, or CoNLL `word gold predicted` lines."""
    text = read_text(path, error)
    if text.startswith("source\tgenerated\n"):
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
        for lineno, row in enumerate(rows[1:], start=2):
            if len(row) != 2:
                raise error(f"{path}:{lineno}: expected 2 tab-separated fields, found {len(row)}")
        return Predictions("generation", [{"source": s, "generated": g} for s, g in rows[1:]], path)
    records: list[dict[str, Any]] = []
    current: dict[str, list[str]] = {"words": [], "gold": [], "predicted": []}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if current["words"]:
                records.append(current)
                current = {"words": [], "gold": [], "predicted": []}
            continue
        fields = line.rsplit(" ", 2)  # the tags hold no space; a word might
        if len(fields) != 3 or not all(fields):
            raise error(f"{path}:{lineno}: expected 'word gold predicted', found {line[:80]!r}")
        for name, value in zip(("words", "gold", "predicted"), fields, strict=True):
            current[name].append(value)
    if current["words"]:
        records.append(current)
    return Predictions("token_classification", records, path)
