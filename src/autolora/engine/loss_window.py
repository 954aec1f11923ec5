"""Loss bookkeeping shared by both loops: sums stay on the device and are read every `every` steps.

Reading is the loops' only host-device synchronisation, and where non-finite values are caught: a
NaN/inf in any step since the last read stops the run (checkpoint.Diverged) before anything is saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from autolora.errors import Diverged


class LossWindow:
    """Running sums of one or more losses since the last read."""

    def __init__(self, names: Sequence[str], device: torch.device, every: int,
                 mean: Callable[[list[Tensor]], list[Tensor]] = lambda tensors: tensors):
        self.names, self.every, self.mean = list(names), every, mean  # mean: over data-parallel processes
        self.sums = torch.zeros(len(names), device=device)
        self.count = 0

    def add(self, losses: Tensor) -> None:
        """Add this step's losses (a device tensor, one entry per name): no sync."""
        self.sums += losses.detach().float().reshape(-1)
        self.count += 1

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def read(self, phase: str, step: int) -> dict[str, float]:
        """Means since the last read; raises Diverged on NaN/inf."""
        means = (self.mean([self.sums])[0] / max(1, self.count)).tolist()
        self.sums.zero_()
        self.count = 0
        if not all(math.isfinite(v) for v in means):
            raise Diverged(f"non-finite {phase} loss before step {step} ({dict(zip(self.names, means, strict=True))}); "
                           "lower the learning rate or use precision=fp32")
        return dict(zip(self.names, means, strict=True))

    def state(self) -> dict:
        return {"sums": self.sums.cpu(), "count": self.count}

    def restore(self, state: Mapping | None) -> None:
        if state:
            self.sums.copy_(state["sums"])
            self.count = state["count"]
