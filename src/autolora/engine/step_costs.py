"""Measured step costs that compile=auto decides from (engine/auto_compile.py): per shape family and step,
the step's time under CUDA graphs of the eager kernels and under inductor, and inductor's one-time warm-up.

Provenance of every row: `python -m autolora.bench --steps 20 --warmup 3` at commit 96df89a on one NVIDIA
H200, 2026-12-04 (the table of issue #28); bf16 autocast, random-init weights. The warm-up is the wall time of
the 3 warm-up steps of one batch shape (dynamo tracing, inductor compilation, the CUDA graph capture) on a cold
compile cache. To add a shape family, run the bench at it and copy its `graphs`/`inductor` rows here.

A row stands for its model at its measured tokens per step (batch x length) *and above*: a bigger step does
more GPU-bound work, which is where inductor's fused kernels save time, while the warm-up barely grows with the
shape. Below the measured size, or for a model or step not listed, there is no row: auto keeps CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

PROVENANCE = {"command": "python -m autolora.bench --steps 20 --warmup 3", "commit": "96df89a",
              "device": "NVIDIA H200", "date": "2026-12-04"}
STEPS = ("fixed_rank", "first_order", "second_order", "second_order_central")  # bench.steps.OURS's names


@dataclass(frozen=True)
class StepCost:
    """One measured (model, step) pair: ms per step in each capture mode, inductor's warm-up for one shape."""

    model: str
    step: str
    batch: int
    length: int
    graphs_ms: float
    inductor_ms: float
    inductor_warmup_s: float

    @property
    def shape(self) -> str:
        return f"{self.model}@{self.batch}x{self.length}"

    @property
    def saved_ms(self) -> float:
        """What inductor saves per step over graphs (negative: it is slower)."""
        return self.graphs_ms - self.inductor_ms


COSTS = (
    StepCost("roberta-base", "fixed_rank", 32, 256, graphs_ms=15.73, inductor_ms=12.50, inductor_warmup_s=31.9),
    StepCost("roberta-base", "second_order", 32, 256, graphs_ms=47.77, inductor_ms=36.44, inductor_warmup_s=63.8),
    StepCost("gpt2-medium", "fixed_rank", 32, 256, graphs_ms=104.26, inductor_ms=36.91, inductor_warmup_s=56.3),
    StepCost("gpt2-medium", "second_order", 32, 256, graphs_ms=313.65, inductor_ms=111.76, inductor_warmup_s=138.4),
)


def lookup(model: str, step: str, tokens: int, costs: tuple[StepCost, ...] = COSTS) -> StepCost | None:
    """The measured row that stands for `model`'s `step` at `tokens` per step (batch x length): the largest
    measured shape at or below `tokens`; None when there is none (an unknown shape)."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    rows = [row for row in costs if row.model == model and row.step == step and row.batch * row.length <= tokens]
    return max(rows, key=lambda row: row.batch * row.length, default=None)
