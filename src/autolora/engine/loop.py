"""What both training loops (the search and the retrain) need from the run besides their data and config:
one settings object instead of the same nine arguments spelled out for each loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from autolora.engine.checkpoint import Checkpointer
from autolora.engine.distributed import SINGLE, World


def _no_log(record: dict, step: int) -> None:
    """A log that keeps nothing (tests and benchmarks)."""


@dataclass(frozen=True)
class Loop:
    """The run-side settings of a training loop."""

    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # a context per forward
    log: Callable[[dict, int], None] = _no_log  # (record, step): events.jsonl and the tracker
    log_every: int = 20  # steps between logged records (the loops' only host syncs)
    checkpoint: Checkpointer | None = None  # saves and restores the loop state; None: not resumable
    progress: bool = True  # a tqdm bar
    world: World = field(default=SINGLE)  # data-parallel processes
    compile_mode: str = "off"  # engine.capture: off | graphs | inductor (resolved, never auto)
