"""Task families by name: a task config's `family` key picks the class (no import strings in YAML)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autolora.tasks.base import Task
from autolora.tasks.e2e import GenerationTask
from autolora.tasks.glue import GlueTask
from autolora.tasks.ner import NerTask
from autolora.tasks.own import GenerationFilesTask, TextClassificationTask, TokenClassificationTask

# glue, ner, generation (E2E): the paper's datasets; the rest read your own files (tasks/own.py)
FAMILIES = {"glue": GlueTask, "generation": GenerationTask, "ner": NerTask,
            "text_classification": TextClassificationTask, "token_classification": TokenClassificationTask,
            "generation_files": GenerationFilesTask}


def build_task(cfg: Mapping[str, Any]) -> Task:
    """The Task object for a `task` config node."""
    family = cfg["family"]
    if family not in FAMILIES:
        raise ValueError(f"task.family {family!r} is unknown; known: {sorted(FAMILIES)}")
    task = FAMILIES[family].from_config(cfg)
    check_max_length(task.max_length)
    return task


def check_max_length(value: object) -> None:
    """task.max_length, which every family has, is a token count (its upper bound, the model's positions, is
    checked against the architecture by the preflight)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"task.max_length must be an integer >= 1, got {value!r}")
