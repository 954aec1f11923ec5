"""The README's statements about data folders ("One data folder", the data.data_dir key, the error table),
each exercised here or where named:
- data.data_dir holds every dataset's folder (glue/..., conll2003/, bionlp13cg/, e2e/): one folder serves all;
- it is the folder `make reproduce DATA_DIR=` takes: tests/analysis/test_report.py
  (test_reproduce_plans_one_multirun_per_experiment_and_spec);
- your own files' relative paths start there (else at the working directory): tests/tasks/test_own.py
  (test_files_are_relative_to_data_dir_or_the_working_directory);
- a wrong folder (the task folder itself, one above the data folder) gets a "did you mean": tests/tasks/test_own.py
  (test_wrong_data_dir_says_did_you_mean), and the glue/ folder itself, by any name, below;
- hub data without data.data_dir while offline names the folder to give: tests/cli/test_bad_input.py."""

from __future__ import annotations

import pytest
from conftest import REPO, task_config

from autolora.errors import DataError
from autolora.tasks import build_task
from autolora.tasks.base import DataConfig

FIXTURES = REPO / "tests" / "fixtures"  # holds glue/CoLA/, glue/QNLI/, ..., conll2003/, bionlp13cg/, e2e/
RTE = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"


def data(data_dir) -> DataConfig:
    return DataConfig(source="auto", data_dir=str(data_dir), max_train_samples=None, max_eval_samples=None)


@pytest.mark.parametrize("task", ["glue/cola", "glue/qnli", "ner/conll2003", "ner/bionlp13cg", "e2e"])
def test_one_data_folder_serves_every_task(task):
    """The same data.data_dir for GLUE, NER and E2E tasks: each reads its own folder under it."""
    splits = build_task(task_config(task)).load(data(FIXTURES))
    folder = FIXTURES / task_config(task)["local"]["dir"]
    assert splits.files and all(path.parent == folder for path in splits.files), splits.files
    assert len(splits.train) > 0


def rte_folder(root):
    (root / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (root / "RTE" / name).write_text(RTE)
    return root


def test_the_glue_folder_itself_is_refused_with_did_you_mean(tmp_path):
    """data.data_dir=<data>/glue (the earlier GLUE rule) stops, naming data.data_dir=<data>, as any wrong folder."""
    rte_folder(tmp_path / "data" / "glue")
    with pytest.raises(DataError, match=rf"glue/RTE: no such folder \(data.data_dir={tmp_path}/data/glue must hold "
                                        rf"glue/RTE/\); did you mean data.data_dir={tmp_path}/data\?$"):
        build_task(task_config("glue/rte")).load(data(tmp_path / "data" / "glue"))
    assert len(build_task(task_config("glue/rte")).load(data(tmp_path / "data")).train) == 1  # the folder it names


def test_a_glue_folder_of_another_name_is_refused_saying_how_to_place_it(tmp_path):
    """download_glue_data.py's glue_data/ (RTE/ directly inside, no glue/ anywhere near) stops with what to do."""
    rte_folder(tmp_path / "glue_data")
    with pytest.raises(DataError, match=r"must hold glue/RTE/\); it holds RTE/ itself: rename or link it as "
                                        r"<folder>/glue/ and set data.data_dir=<folder>$"):
        build_task(task_config("glue/rte")).load(data(tmp_path / "glue_data"))
