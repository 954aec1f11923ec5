"""predictions.jsonl: text that holds newlines and tabs round-trips; a cut-off, edited or garbled file is one line
naming the file (and line); an older run's predictions.txt still reads."""

from __future__ import annotations

import json

import pytest

from autolora import predictions


def test_text_with_newlines_and_tabs_round_trips(tmp_path):
    """A source with a tab and a newline, a generated text with both, and a token holding a tab stay one record
    each (the TSV of older runs split them into extra fields and lines)."""
    sources, generated = ["name[a\tb]\nnext", "plain"], ["out\twith\ttabs\n", ""]
    (tmp_path / "predictions.jsonl").write_text(predictions.generation_text(sources, generated))
    found = predictions.read(tmp_path)
    assert found.kind == "generation" and [(r["source"], r["generated"]) for r in found.records] == list(
        zip(sources, generated, strict=True))
    (tmp_path / "predictions.jsonl").write_text(predictions.tagging_text([["a\tb", "c d"]], [["B-X", "O"]],
                                                                         [["O", "O"]]))
    assert predictions.read(tmp_path).records == [{"words": ["a\tb", "c d"], "gold": ["B-X", "O"],
                                                   "predicted": ["O", "O"]}]


def test_a_cut_off_or_garbled_file_is_one_line(tmp_path):
    """Cut after a record (count mismatch), cut inside a record (not JSON), a wrong field, tags not one per word,
    no header: each a ValueError naming the file and line."""
    text = predictions.generation_text(["a", "b", "c"], ["x", "y", "z"])
    path = tmp_path / "predictions.jsonl"
    lines = text.splitlines(keepends=True)
    cases = {
        "".join(lines[:3]): r"predictions.jsonl: the header announces 3 records, the file holds 2",
        "".join(lines[:3]) + lines[3][:8]: r"predictions.jsonl:4: not a JSON line",
        lines[0] + json.dumps({"source": "a", "generated": 3}) + "\n" + "".join(lines[2:]):
            r"predictions.jsonl:2: generated must be a string",
        lines[0] + json.dumps({"source": "a"}) + "\n" + "".join(lines[2:]): r":2: expected the fields",
        "".join(lines[1:]): r"predictions.jsonl:1: not a predictions header",
        predictions.to_jsonl("token_classification", [{"words": ["a", "b"], "gold": ["O"], "predicted": ["O"]}]):
            r":2: 2 words, 1 gold and 1 predicted tags",
    }
    for content, message in cases.items():
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            predictions.read(tmp_path)


def test_an_older_runs_predictions_txt_still_reads(tmp_path):
    """The TSV (generation) and the `word gold predicted` lines (NER) of runs from before predictions.jsonl; a
    line without three fields names its line."""
    (tmp_path / "predictions.txt").write_text("source\tgenerated\nname[a]\tA is here.\n")
    assert predictions.read(tmp_path).records == [{"source": "name[a]", "generated": "A is here."}]
    (tmp_path / "predictions.txt").write_text("Oslo B-LOC B-LOC\nis O O\n\nAnna B-PER O\n")
    found = predictions.read(tmp_path)
    assert found.kind == "token_classification" and len(found.records) == 2
    assert found.records[1] == {"words": ["Anna"], "gold": ["B-PER"], "predicted": ["O"]}
    (tmp_path / "predictions.txt").write_text("Oslo B-LOC B-LOC\nbroken\n")
    with pytest.raises(ValueError, match=r"predictions.txt:2: expected 'word gold predicted'"):
        predictions.read(tmp_path)
