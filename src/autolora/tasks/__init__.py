"""Task families by name: a task config's `family` key picks the class (no import strings in YAML)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autolora.tasks.base import Task
from autolora.tasks.e2e import GenerationTask
from autolora.tasks.glue import GlueTask
from autolora.tasks.ner import NerTask

FAMILIES = {"glue": GlueTask, "generation": GenerationTask, "ner": NerTask}


def build_task(cfg: Mapping[str, Any]) -> Task:
    """The Task object for a `task` config node."""
    family = cfg["family"]
    if family not in FAMILIES:
        raise ValueError(f"task.family {family!r} is unknown; known: {sorted(FAMILIES)}")
    return FAMILIES[family].from_config(cfg)
