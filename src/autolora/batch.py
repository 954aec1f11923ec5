"""A batch is a dict of tensors: the model's inputs plus `labels`. Helpers shared by both loops."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

Batch = dict[str, Tensor]


def to_device(batch: Mapping[str, Tensor], device: torch.device) -> Batch:
    """Move a batch; non_blocking lets pinned host memory overlap the copy with compute."""
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def model_inputs(batch: Mapping[str, Tensor]) -> Batch:
    """The batch minus its labels: the loss is the task's, not the model's built-in one."""
    return {key: value for key, value in batch.items() if key != "labels"}
