"""Your own data files (tasks/own.py, tasks/files.py): the three families on fixtures, held-out dev splits,
the one data-folder rule, and errors that name file, line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, task_config

from autolora.errors import DataError
from autolora.tasks import build_task
from autolora.tasks.base import DataConfig

OWN = REPO / "tests" / "fixtures" / "own"


def data(data_dir: Path | str | None = OWN) -> DataConfig:
    return DataConfig(source="auto", data_dir=None if data_dir is None else str(data_dir), max_train_samples=None,
                      max_eval_samples=None)


def own_task(family: str, **keys):
    """The task of conf/task/<family>.yaml with these task.* keys set."""
    return build_task({**task_config(family, f"task.train_file={keys.pop('train_file')}"), **keys})


def test_csv_classes_are_inferred_and_dev_is_held_out_by_split_seed():
    """Label names come sorted from the training file; without dev/test files a seeded tenth is dev, the same
    rows for every load (split_seed), other rows for another split_seed."""
    task = own_task("text_classification", train_file="reviews.csv", text_columns=["review"], label_column="sentiment")
    splits = task.load(data())
    assert task.labels == ("negative", "positive") and task.metrics == ("accuracy", "macro_f1")
    assert (len(splits.train), len(splits.dev), splits.test) == (22, 2, None)
    again = own_task("text_classification", train_file="reviews.csv", text_columns=["review"],
                     label_column="sentiment").load(data())
    assert list(again.dev["text_a"]) == list(splits.dev["text_a"])
    other = own_task("text_classification", train_file="reviews.csv", text_columns=["review"],
                     label_column="sentiment", split_seed=1).load(data())
    assert list(other.dev["text_a"]) != list(splits.dev["text_a"])
    assert len(splits.train) + len(splits.dev) == 24


def test_float_label_column_means_regression_with_correlations():
    """A column of floats makes a one-output regressor scored by Pearson and Spearman, on sentence pairs."""
    task = own_task("text_classification", train_file="similarity.csv", text_columns=["sentence1", "sentence2"],
                    label_column="score")
    splits = task.load(data())
    assert task.labels is None and task.num_labels == 1 and task.main_metric == "pearson"
    assert isinstance(splits.train["labels"][0], float) and "text_b" in splits.train.column_names


@pytest.mark.parametrize("train_file", ["ner_train.conll", "ner_train.jsonl"])
def test_token_files_conll_or_json_lines(train_file):
    """CoNLL columns (last field = tag, -DOCSTART- skipped) and JSON lines with token/tag lists give the same
    tag set; a test file is the scored split."""
    task = own_task("token_classification", train_file=train_file, test_file="ner_test.conll")
    splits = task.load(data())
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert splits.dev is None and len(splits.test) == 6 and list(splits.scored()) == ["test"]
    assert all(len(w) == len(t) for w, t in zip(splits.train["words"], splits.train["tags"], strict=True))


def test_generation_holds_out_whole_sources():
    """Several references of one source stay on one side of the held-out split (no source in both)."""
    task = own_task("generation", train_file="menu.jsonl", source_column="data", target_column="text", dev_fraction=0.3)
    splits = task.load(data())
    assert set(splits.dev["source"]).isdisjoint(splits.train["source"]) and len(splits.dev) >= 2


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


@pytest.mark.parametrize("files, keys, message", [
    ({"t.csv": "text,gold\na,x\nb,y\n"}, {}, r"t.csv:1: no column 'label'; the columns are \['text', 'gold'\]"),
    ({"t.csv": "text,label\na,x\nb,y,z\n"}, {}, r"t.csv:3: expected 2 fields, found 3"),
    ({"t.jsonl": '{"text": "a", "label": "x"}\n{"text": "b" "label": "y"}\n'}, {}, r"t.jsonl:2: JSON parse error"),
    ({"t.csv": "text,label\na,x\n\"b\nc\",\nd,y\n"}, {}, r"t.csv:3: column 'label' is empty"),
    ({"t.csv": "text,label\na,0.5\nb,high\nc,1.5\n"}, {}, r"t.csv:3: label 'high' in column 'label' is not a number"),
    ({"t.csv": "text,label\na,x\nb,y\n", "d.csv": "text,label\nc,x\nd,z\n"}, {"dev_file": "d.csv"},
     r"d.csv:3: label 'z' in column 'label' is not one of \['x', 'y'\]"),
    ({"t.csv": "text,label\na,x\nb,y\nc,z\n"}, {"metrics": ["f1"]},
     r"f1 is the positive .* with 3 labels use macro_f1"),
    ({"t.txt": "text label\n"}, {}, r"t.txt: unknown file type '.txt'"),
    ({"t.csv": "text,label\na,x\nb,y\n"}, {"train_file": "t.tsv"},
     r"task.train_file=t.tsv: .*t.tsv is not a file .*; did you mean .*t.csv\?"),
])
def test_bad_files_name_file_line_and_column(tmp_path, files, keys, message):
    """Missing column (listing those present), malformed record, bad JSON, empty cell, a regression label
    that is no number, a dev label unseen in training, f1 on three classes, unknown suffix, wrong name."""
    for name, text in files.items():
        _write(tmp_path, name, text)
    keys = {"train_file": next(iter(files)), **keys}
    with pytest.raises(DataError, match=message):
        own_task("text_classification", **keys).load(data(tmp_path))


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl"])
def test_a_latin1_table_names_the_line_of_the_bad_byte(tmp_path, name):
    """datasets' csv and json loaders report a non-UTF-8 byte without its line (pandas: 'position 0' of a
    chunk); the file is checked first, so the error names the line."""
    rows = ["text,label", "a,x", "b,y", "café,x"] if name.endswith(".csv") else \
        ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}', '{"text": "café", "label": "x"}']
    (tmp_path / name).write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=rf"{name}:{len(rows)}: not UTF-8 \(byte 0xe9\)"):
        own_task("text_classification", train_file=name).load(data(tmp_path))


def test_token_file_errors_name_the_line(tmp_path):
    """A CoNLL line without a tag and a JSON record whose token and tag lists differ in length."""
    _write(tmp_path, "a.conll", "Mara B-PER\nvisited\n")
    with pytest.raises(DataError, match=r"a.conll:2: expected a token and a tag, found 1 field"):
        own_task("token_classification", train_file="a.conll").load(data(tmp_path))
    _write(tmp_path, "b.jsonl", '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n\n{"tokens": ["c"], "tags": ["O", "O"]}\n')
    with pytest.raises(DataError, match=r"b.jsonl:3: 1 tokens but 2 tags"):
        own_task("token_classification", train_file="b.jsonl").load(data(tmp_path))


def test_files_are_relative_to_data_dir_or_the_working_directory(monkeypatch):
    """task.train_file is read under data.data_dir when it is set, else from the working directory."""
    monkeypatch.chdir(OWN)
    task = own_task("text_classification", train_file="reviews.csv", text_columns=["review"], label_column="sentiment")
    assert len(task.load(data(None)).train) == 22


def test_missing_train_file_key_is_one_config_error():
    """task=text_classification without task.train_file names the key to add."""
    from conftest import compose

    from autolora.errors import ConfigError
    from autolora.runner.run_config import _node

    with pytest.raises(ConfigError, match=r"task.train_file is required: add task.train_file=\.\.\."):
        _node(compose("task=text_classification"), "task")


@pytest.mark.parametrize("wrong", ["data/glue/RTE", "", "projects"])
def test_wrong_data_dir_says_did_you_mean(tmp_path, wrong):
    """data.data_dir pointing at the task folder itself, or at a folder above the data folder, gets a hint
    naming the folder that holds glue/RTE/."""
    root = tmp_path / "projects" / "data"
    for name in ("train.tsv", "dev.tsv"):
        _write(root / "glue" / "RTE", name, "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    given = root / "glue" / "RTE" if wrong.startswith("data") else tmp_path / wrong
    with pytest.raises(DataError, match=rf"no such folder .*did you mean data.data_dir={root}\?"):
        build_task(task_config("glue/rte")).load(data(given))


def test_task_file_outside_the_package_via_searchpath(tmp_path):
    """A user's task file in their own folder, found through hydra.searchpath: the override check accepts it
    and it composes on top of text_classification."""

    from autolora.cli.overrides import check_overrides
    from autolora.errors import ConfigError

    _write(tmp_path / "task", "reviews.yaml", "defaults:\n  - text_classification@_here_\n  - _self_\nname: reviews\n"
           f"train_file: {OWN / 'reviews.csv'}\ntext_columns: [review]\nlabel_column: sentiment\n")
    overrides = [f"hydra.searchpath=[file://{tmp_path}]", "task=reviews"]
    check_overrides(overrides)
    with pytest.raises(ConfigError, match="unknown task 'reviewz'"):
        check_overrides([overrides[0], "task=reviewz"])
    task = build_task(task_config("reviews", overrides[0]))
    assert task.name == "reviews" and len(task.load(data(None)).train) == 22


def test_headline_metric_is_a_key_checked_against_the_family():
    """task.main_metric picks the headline score among the family's metrics; another name is refused."""
    assert own_task("token_classification", train_file="ner_train.conll", main_metric="recall").main_metric == "recall"
    assert own_task("token_classification", train_file="ner_train.conll",
                    main_metric="f1_strict").main_metric == "f1_strict"
    assert own_task("generation", train_file="menu.jsonl", main_metric="rouge_l").main_metric == "rouge_l"
    with pytest.raises(ValueError, match=r"task.main_metric must be one of \['bleu'"):
        own_task("generation", train_file="menu.jsonl", main_metric="accuracy")
