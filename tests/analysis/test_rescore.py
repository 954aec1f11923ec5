"""rescore: refuses references that are not the run's data, cut-off predictions and tags of no scheme, each in one
line; a folder it cannot write is one line and the next folder is still scored."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, compose
from omegaconf import OmegaConf

from autolora import predictions
from autolora.analysis.rescore import main as rescore_main
from autolora.files import sha256_file
from autolora.tasks import metrics

FIXTURES = REPO / "tests" / "fixtures"
E2E = ["debug=tiny", "model=tiny-gpt2", "task=e2e", f"data.data_dir={FIXTURES}"]
NER = ["debug=tiny", "task=ner/conll2003", f"data.data_dir={FIXTURES}"]


def finished(folder, overrides, data_files=(), text=""):
    """A finished run folder as rescore reads it: config.yaml, metrics.json, the marker and predictions.jsonl."""
    cfg = compose(*overrides)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / "metrics.json").write_text(json.dumps({"retrain": {"eval_split": "test"}}))
    (folder / ".autolora-run").write_text(json.dumps({"data": {str(p): sha256_file(p) for p in data_files}}))
    (folder / "predictions.jsonl").write_text(text)
    return folder


def e2e_sources():
    from conftest import task_config

    from autolora.tasks import build_task
    from autolora.tasks.base import DataConfig

    test = build_task(task_config("e2e")).load(DataConfig("local", str(FIXTURES), 1, None)).test
    return list(dict.fromkeys(test["source"]))


def rescore_lines(capsys, folders, *extra) -> list[str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        rescore_main([*map(str, folders), *extra])
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_references_of_other_data_and_cut_off_predictions_are_refused(tmp_path, capsys, monkeypatch):
    """--data-dir holding other references than the run read (sha256 against the marker), and predictions cut
    after a record: one line each, exit 2; the run's own data and whole predictions score."""
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no Java: BLEU and NIST only
    monkeypatch.setattr(metrics, "caption_scores", lambda h, r: dict.fromkeys(metrics.CAPTION_METRICS))
    sources = e2e_sources()
    text = predictions.generation_text(sources, ["there is a place"] * len(sources))
    files = [FIXTURES / "e2e" / "trainset.csv", FIXTURES / "e2e" / "testset_w_refs.csv"]
    good = finished(tmp_path / "good", E2E, files, text)
    other = tmp_path / "other" / "e2e"
    other.mkdir(parents=True)
    shutil.copy(files[0], other / "trainset.csv")
    (other / "testset_w_refs.csv").write_text(files[1].read_text().replace(".", "!", 1))  # one reference edited
    cut = finished(tmp_path / "cut", E2E, files, "".join(text.splitlines(keepends=True)[:-1]))
    [line] = rescore_lines(capsys, [good], "--data-dir", str(other.parent))
    assert line.startswith("rescore: error: ") and "testset_w_refs.csv: not the file the run in" in line, line
    [line] = rescore_lines(capsys, [cut], "--data-dir", str(FIXTURES))
    assert f"the header announces {len(sources)} records, the file holds {len(sources) - 1}" in line, line
    rescore_main([str(good), "--data-dir", str(FIXTURES)])
    assert json.loads((good / "metrics_rescored.json").read_text())["test"]["bleu"] is not None


def test_an_unwritable_output_is_one_line_and_the_next_folder_is_scored(tmp_path, capsys, monkeypatch):
    """metrics_rescored.json cannot be written in the first folder (a folder sits in its place): one line, and
    the second folder is still scored; a legacy predictions.txt with a tag of no scheme is one line too."""
    text = predictions.tagging_text([["Oslo", "is"]], [["B-LOC", "O"]], [["B-LOC", "O"]])
    blocked, fine = finished(tmp_path / "blocked", NER, (), text), finished(tmp_path / "fine", NER, (), text)
    (blocked / "metrics_rescored.json").mkdir()
    legacy = finished(tmp_path / "legacy", NER)
    (legacy / "predictions.jsonl").unlink()
    (legacy / "predictions.txt").write_text("Oslo B-LOC B-LOC\nis O O\nNew York B-LOC I-LOC X\n")
    lines = rescore_lines(capsys, [blocked, fine, legacy])
    assert len(lines) == 2 and all(line.startswith("rescore: error: ") for line in lines), lines
    assert "cannot write" in lines[0] and "blocked/metrics_rescored.json" in lines[0]
    assert "predictions.txt: sentence 1: tag 'X' is not of the IOB2 scheme" in lines[1]
    assert json.loads((fine / "metrics_rescored.json").read_text())["test"]["f1"] == 1.0
