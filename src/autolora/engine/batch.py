"""A batch is a dict of tensors: the model's inputs plus `labels`. Helpers shared by both loops and the collators."""

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


LABEL_PAD = -100  # label id every task's loss skips


def bucket_length(length: int, multiple: int, max_length: int) -> int:
    """The smallest multiple of `multiple` that holds `length`, capped at max_length (the longest a batch
    can be): a few lengths per task, so each batch shape's captured step is reused (engine/capture.py)."""
    return min(max_length, -(-length // multiple) * multiple) if length <= max_length else length


def pad_to_bucket(batch: Mapping[str, Tensor], multiple: int, max_length: int, pad_id: int) -> Batch:
    """Right-pad every (B, T) tensor of a right-padded batch to bucket_length(T): input_ids with the pad id,
    labels with LABEL_PAD, masks and token types with 0. Per-row labels (classification) stay as they are."""
    length = batch["input_ids"].shape[1]
    extra = bucket_length(length, multiple, max_length) - length
    if extra == 0:
        return dict(batch)
    fill = {"input_ids": pad_id, "labels": LABEL_PAD}
    return {key: torch.nn.functional.pad(value, (0, extra), value=fill.get(key, 0))
            if value.dim() == 2 and value.shape[1] == length else value
            for key, value in batch.items()}
