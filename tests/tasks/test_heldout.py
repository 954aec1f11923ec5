"""data.select_on=heldout: selection runs score a seeded share of train, never the task's dev or test."""

from __future__ import annotations

import pytest
from datasets import Dataset

from autolora.errors import DataError
from autolora.tasks.base import DataConfig, Splits, select_on_heldout


def data(select_on="heldout", fraction=0.25, seed=0) -> DataConfig:
    return DataConfig(source="local", data_dir=None, max_train_samples=None, max_eval_samples=None,
                      select_on=select_on, heldout_fraction=fraction, heldout_seed=seed)


def splits(n=40) -> Splits:
    rows = Dataset.from_dict({"text_a": [f"t{i}" for i in range(n)], "labels": [i % 2 for i in range(n)]})
    dev = Dataset.from_dict({"text_a": ["dev"], "labels": [0]})
    return Splits(rows, dev, "fixture", test=dev)


def test_heldout_rows_leave_train_and_replace_dev_and_test():
    out = select_on_heldout(splits(), data())
    train, dev = set(out.train["text_a"]), set(out.dev["text_a"])
    assert len(dev) == 10 and len(train) == 30 and not train & dev and train | dev == {f"t{i}" for i in range(40)}
    assert out.test is None and "dev" not in dev
    assert list(out.scored()) == ["dev"]


def test_heldout_rows_depend_on_heldout_seed_only():
    first, again = select_on_heldout(splits(), data()), select_on_heldout(splits(), data())
    assert first.dev["text_a"] == again.dev["text_a"]
    assert first.dev["text_a"] != select_on_heldout(splits(), data(seed=1)).dev["text_a"]


def test_select_on_dev_changes_nothing():
    given = splits()
    assert select_on_heldout(given, data("dev")) is given


def test_too_few_rows_and_bad_values_are_refused():
    with pytest.raises(DataError, match="too few"):
        select_on_heldout(splits(n=2), data(fraction=0.1))
    with pytest.raises(ValueError, match="data.select_on"):
        data("test")
    with pytest.raises(ValueError, match="data.heldout_fraction"):
        data(fraction=1.0)
