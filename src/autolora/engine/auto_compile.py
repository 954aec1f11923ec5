"""compile=auto's pick for one phase of one run: CUDA graphs of the eager kernels, or inductor where the run
is long enough to repay inductor's compilation, from the measured costs in engine/step_costs.py.

Inductor's kernels make a GPU-bound step faster (step_costs: 2.8x at gpt2-medium 32x256 on an H200) but each
batch shape costs a compilation first (30-140 s measured). So inductor is picked when

    steps x (graphs ms - inductor ms) > shapes x warm-up per shape

where `shapes` counts the batch shapes the phase can meet (the length buckets, engine/batch.bucket_length, plus
the short last batch of a pass; the search's validation batches too, which have their own row count where
search.val_batch_size differs and their own short last batch): an upper bound, so the pick errs towards graphs.
Where no measured row stands for the phase (step_costs.lookup), auto keeps graphs, what it picked before the
table existed. Where capture cannot run at all (CPU, data parallel, an eager-only phase: capture.resolve_compile)
auto is off, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autolora.engine import step_costs


@dataclass(frozen=True)
class PhasePlan:
    """What the pick needs to know of a phase: its model and step (step_costs.STEPS), its batches and length."""

    model: str
    step: str
    steps: int  # optimiser steps of the phase
    epochs: int
    batch_size: int
    max_length: int  # the task's longest batch (tokens)
    pad_to_multiple: int
    short_last_batch: bool  # the training rows do not split into whole batches: one more shape per pass
    # the search's validation batches (0: the phase has none): their rows per batch, whether their rows leave a
    # short last batch, and how many passes over them the phase makes
    val_batch_size: int = 0
    val_short_last_batch: bool = False
    val_passes: int = 0


@dataclass(frozen=True)
class Choice:
    """The mode a phase runs in and why, in words (for the summary and metrics.json)."""

    mode: str
    reason: str


def batch_shapes(plan: PhasePlan) -> int:
    """An upper bound on the batch shapes the phase compiles: every length bucket, and as many short last
    batches (one per pass) as there are passes, each of any bucket; the same again for the validation batches,
    whose full batches share the training batches' shapes only where they have as many rows."""
    buckets = math.ceil(plan.max_length / plan.pad_to_multiple)
    shapes = buckets + (min(plan.epochs, buckets) if plan.short_last_batch else 0)
    if plan.val_batch_size:
        shapes += buckets if plan.val_batch_size != plan.batch_size else 0
        shapes += min(plan.val_passes, buckets) if plan.val_short_last_batch else 0
    return shapes


def choose(requested: str, feasible: str, plan: PhasePlan, blocker: str | None = None,
           costs: tuple[step_costs.StepCost, ...] = step_costs.COSTS) -> Choice:
    """The phase's mode. `requested`: the compile setting; `feasible`: capture.resolve_compile's answer for it
    (auto -> graphs where capture can run, else off); `blocker`: why capture cannot run, if it cannot. Only
    auto with capture possible is decided here."""
    if requested != "auto":
        return Choice(feasible, f"{feasible}: set by compile={requested}")
    if feasible != "graphs":
        return Choice(feasible, f"{feasible}: no capture here ({blocker or 'capture.resolve_compile'})")
    tokens = plan.batch_size * plan.max_length
    row = step_costs.lookup(plan.model, plan.step, tokens, costs)
    if row is None:
        return Choice("graphs", f"graphs: no measured inductor cost for {plan.model} {plan.step} at "
                                f"{plan.batch_size}x{plan.max_length} (engine/step_costs.py)")
    shapes = batch_shapes(plan)
    gain_s, warmup_s = plan.steps * row.saved_ms / 1000, shapes * row.inductor_warmup_s
    pick = "inductor" if gain_s > warmup_s else "graphs"
    relation, plural = (">" if pick == "inductor" else "<="), "s" * (shapes != 1)
    return Choice(pick, f"{pick}: {plan.steps} steps x ~{row.saved_ms:.1f} ms saved = ~{gain_s:.0f} s {relation} "
                        f"~{warmup_s:.0f} s warm-up ({shapes} shape{plural} x {row.inductor_warmup_s:.0f} s; "
                        f"measured at {row.shape} on an {step_costs.PROVENANCE['device']})")


def search_step(hypergrad: str, fd: str, eta: float) -> str:
    """The bench's name (step_costs.STEPS) of the search step these settings run."""
    if hypergrad != "fd":
        return "second_order"  # exact steps eagerly: resolve_compile never lets it reach choose()
    if eta == 0:
        return "first_order"
    return "second_order_central" if fd == "central" else "second_order"
