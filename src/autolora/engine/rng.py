"""The same dropout masks in every pass of one search step, eager or inside a captured CUDA graph.

The finite difference subtracts two evaluations of one function (L_tr at W + eps·v and at W, or at W - eps·v).
With dropout on, that is one function only if every evaluation draws the same masks; otherwise the
difference measures two noisy draws, not the curvature. Evaluation i of the training loss in a step draws
from `train(i)`, the validation loss from `val()`:
- CPU: every evaluation replays one seed under fork_rng (a new seed per step, drawn from the CPU generator,
  so checkpoints restore it with the global RNG state).
- CUDA: fork_rng and manual_seed are not allowed inside graph capture. Instead evaluation i draws from its
  own generator state (torch's graph-safe states: the default CUDA generator is pointed at it for the pass).
  The train states start as clones of one state and every step advances each by the same amount (the
  passes have the same shapes), so they stay equal: evaluation i of every step sees the masks of
  evaluation 0. CUDA graphs advance registered states on each replay exactly as eager execution does, so
  eager and captured steps draw the same masks at the same step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

TRAIN_PASSES = 3  # at most: W, W + eps·v, W - eps·v (central difference)


class ReplayedSeed:
    """Eager (CPU, or any device without graph-safe states): one seed per step and batch, replayed under
    fork_rng by every evaluation."""

    generators: tuple[torch.Generator, ...] = ()

    def __init__(self, device: torch.device):
        self.device = device
        self.train_seed = self.val_seed = None

    def new_step(self) -> None:
        self.train_seed, self.val_seed = (int(s) for s in torch.randint(2**62, (2,)))  # CPU generator: no sync

    def train(self, index: int) -> contextlib.AbstractContextManager:
        return self._replay(self.train_seed)

    def val(self) -> contextlib.AbstractContextManager:
        return self._replay(self.val_seed)

    @contextlib.contextmanager
    def _replay(self, seed: int | None) -> Iterator[None]:
        if seed is None:
            raise RuntimeError("new_step() must start every step")
        devices = [self.device.index or 0] if self.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(seed)
            yield

    def state_dict(self) -> dict[str, Any]:
        return {}  # the seeds follow from the CPU generator, which checkpoints already save

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class GraphSafeStates:
    """CUDA: a generator state per training evaluation (clones of one state) and one for validation."""

    def __init__(self, device: torch.device, seed: int):
        self.device_index = device.index if device.index is not None else torch.cuda.current_device()
        train, val = (torch.Generator(device=device) for _ in range(2))
        train.manual_seed(seed)
        val.manual_seed(seed + 1)
        self.train_states = [train.clone_state() for _ in range(TRAIN_PASSES)]
        self.val_state = val.clone_state()

    @property
    def generators(self) -> tuple[torch.Generator, ...]:
        """The states a CUDA graph of the step must register (rng state is advanced per replay)."""
        return (*self.train_states, self.val_state)

    def new_step(self) -> None:
        pass  # the states advance by themselves

    def train(self, index: int) -> contextlib.AbstractContextManager:
        return self._draw_from(self.train_states[index])

    def val(self) -> contextlib.AbstractContextManager:
        return self._draw_from(self.val_state)

    @contextlib.contextmanager
    def _draw_from(self, state: torch.Generator) -> Iterator[None]:
        default = torch.cuda.default_generators[self.device_index]
        home = default.graphsafe_get_state()
        default.graphsafe_set_state(state)
        try:
            yield
        finally:
            default.graphsafe_set_state(home)

    def state_dict(self) -> dict[str, Any]:
        return {"train": [s.get_state() for s in self.train_states], "val": self.val_state.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for generator, saved in zip(self.train_states, state["train"], strict=True):
            generator.set_state(saved)
        self.val_state.set_state(state["val"])


def dropout_streams(device: torch.device) -> ReplayedSeed | GraphSafeStates:
    """The mask streams of a search on `device`; the CUDA seed comes from the (seeded) CPU generator."""
    if device.type == "cuda":
        return GraphSafeStates(device, int(torch.randint(2**62, (1,))))
    return ReplayedSeed(device)
