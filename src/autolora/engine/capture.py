"""Training steps at the speed of the GPU: each batch shape's step captured once as a CUDA graph, then replayed.

At the shapes the runs use (MiniLM, 16 x 32-64 tokens) an eager step spends most of its time in Python and
kernel launches (results/bench_history/bench_2026-12-02.md): the GPU idles. A CUDA graph records every kernel
of a step once and replays them with one launch. A graph is only valid for the shapes, addresses and host-side
values it was recorded with, hence the rules the steps follow:
- batches are padded to a few lengths (`pad_to_multiple`, batch.pad_to_bucket), and each shape gets its own
  graph; a shape runs eagerly the first time it is seen (warm-up: lazy library set-up, compilation), is
  captured the second time and replayed from then on. Graphs of one step share one memory pool: each graph's
  output is consumed before the next replay, so no graph needs another's memory to survive;
- the step reads its inputs from static buffers that each replay refills (copy_), never from new tensors;
- nothing host-side may change inside the step: the learning rate is a device tensor that the schedule
  fills between steps (`adamw`), AdamW is fused and capturable (its step count lives on the device),
  and dropout draws from registered generator states (rng.py), never from manual_seed;
- warm-up, capture and replay run on one side stream (libraries cache handles per stream; capture needs a
  non-default stream); the loop enters it with `on_side_stream` so that every tensor lives on one stream.

`compile` (config) picks: off (eager), graphs (CUDA graphs of the eager kernels), inductor (torch.compile's
fused kernels, then CUDA graphs), auto (graphs on CUDA where capture is possible, else off).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

COMPILE_MODES = ("auto", "off", "graphs", "inductor")
Batch = Mapping[str, Tensor]


def resolve_compile(mode: str, device: torch.device, *, distributed: bool, eager_only: str | None = None) -> str:
    """The concrete mode of one phase: auto -> graphs where capture is possible (one CUDA process, and the
    phase has no reason `eager_only` to step eagerly), else off. An explicit mode that cannot run is an error."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    blockers = capture_blockers(device, distributed=distributed, eager_only=eager_only)
    if mode == "auto":
        return "off" if blockers else "graphs"
    if mode != "off" and blockers:
        raise ValueError(f"compile={mode} cannot run here: {blockers[0]}; use compile=auto or compile=off")
    return mode


def capture_blockers(device: torch.device, *, distributed: bool, eager_only: str | None = None) -> list[str]:
    """Why a phase cannot capture its step here, in words (none: it can)."""
    return [reason for reason, present in (
        ("it needs a CUDA device", device.type != "cuda"),
        ("data-parallel runs step eagerly (their all-reduces are not captured)", distributed),
        (eager_only, eager_only is not None),
    ) if present]


def adamw(params: Sequence[Tensor], *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as the loops use it. On CUDA: fused and capturable, the learning rate a device tensor, eager or
    captured alike (so a captured step computes exactly what the eager one does: tests/test_gpu.py)."""
    if params[0].device.type != "cuda":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    optimizer = torch.optim.AdamW(params, lr=torch.tensor(lr, device=params[0].device), weight_decay=weight_decay,
                                  fused=True, capturable=True)
    for group in optimizer.param_groups:  # a float base: the schedule then computes on the host and fills the
        group["initial_lr"] = lr           # device tensor (a tensor base would read it back: a sync per step)
    return optimizer


def device_lr(optimizer: torch.optim.Optimizer) -> None:
    """On CUDA, put each group's learning rate back on the device as a tensor (a restored state dict brings it
    back on the CPU, where a captured step would bake its value in). Before any capture: graphs hold its address."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        if device.type == "cuda":
            group["lr"] = torch.tensor(float(group["lr"]), device=device)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate as a float (reads a device tensor: call it at log steps only)."""
    return float(optimizer.param_groups[0]["lr"])


@dataclass
class CaptureStats:
    """What capture cost, for metrics.json and the summary: graphs made, and the time of the first
    (eager, compiling) step of each shape and of each capture."""

    graphs: int = 0
    warmup_steps: int = 0
    warmup_s: float = 0.0
    capture_s: float = 0.0
    compiles: int = 0  # torch.compile (dynamo) graphs compiled by this step's function

    def as_dict(self) -> dict[str, float]:
        return {"graphs": self.graphs, "warmup_steps": self.warmup_steps, "warmup_s": round(self.warmup_s, 3),
                "capture_s": round(self.capture_s, 3), "compiles": self.compiles}


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list[dict[str, Tensor]]  # static buffers the graph reads
    output: Tensor  # static buffer the graph writes


def _shape_key(batches: Sequence[Batch]) -> tuple:
    return tuple((name, tuple(t.shape), t.dtype) for batch in batches for name, t in batch.items())


@dataclass
class CapturedStep:
    """Call it like `step(*batches) -> Tensor`: eager the first `warmup` times a shape is seen, then a CUDA
    graph per shape. `generators`: the RNG states the step draws from (registered with every graph)."""

    step: Callable[..., Tensor]
    generators: Sequence[torch.Generator] = ()
    warmup: int = 1
    stats: CaptureStats = field(default_factory=CaptureStats)

    def __post_init__(self):
        if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            raise RuntimeError(f"compile=graphs needs torch >= 2.4 (CUDAGraph.register_generator_state); "
                               f"this is torch {torch.__version__}")
        self.stream = torch.cuda.Stream()
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple, _Graph] = {}
        self._seen: Counter = Counter()

    @contextlib.contextmanager
    def on_side_stream(self) -> Iterator[None]:
        """Run a loop on the capture stream (see the module docstring); the caller's stream waits for it after."""
        caller = torch.cuda.current_stream()
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def __call__(self, *batches: Batch) -> Tensor:
        key = _shape_key(batches)
        entry = self._graphs.get(key)
        if entry is None:
            self._seen[key] += 1
            if self._seen[key] <= self.warmup:
                return self._eager_warmup(batches)
            entry = self._graphs[key] = self._capture(batches)
        else:
            for static, batch in zip(entry.inputs, batches, strict=True):
                for name, tensor in batch.items():
                    static[name].copy_(tensor, non_blocking=True)
        entry.graph.replay()
        return entry.output.clone()  # the next replay overwrites the static output

    def _eager_warmup(self, batches: Sequence[Batch]) -> Tensor:
        started, compiled = time.perf_counter(), _dynamo_graphs()
        with torch.cuda.stream(self.stream):
            out = self.step(*batches)
        torch.cuda.current_stream().wait_stream(self.stream)
        self.stream.synchronize()  # warm-up only: its time is reported, so it must be finished
        self.stats.warmup_steps += 1
        self.stats.warmup_s += time.perf_counter() - started
        self.stats.compiles += _dynamo_graphs() - compiled
        return out

    def _capture(self, batches: Sequence[Batch]) -> _Graph:
        started = time.perf_counter()
        static = [{name: t.clone() for name, t in batch.items()} for batch in batches]
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            output = self.step(*static)
        self.stats.graphs += 1
        self.stats.capture_s += time.perf_counter() - started
        return _Graph(graph, static, output)


def _dynamo_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (0 when dynamo was never used)."""
    import sys

    utils = sys.modules.get("torch._dynamo.utils")
    return 0 if utils is None else int(utils.counters["stats"]["unique_graphs"])


def compiled(fn: Callable, mode: str) -> Callable:
    """fn compiled by inductor (static shapes; its own CUDA graphs off: CapturedStep captures the whole step)."""
    if mode != "inductor":
        return fn
    import torch._dynamo

    # every bucket and parameter kind (nn.Parameter at W, plain tensors at W' and W±) is its own compile
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(fn, dynamic=False)


def make_step(step: Callable[..., Tensor], mode: str, generators: Sequence[torch.Generator] = ()):
    """The loop's step function: `step` itself (off) or a CapturedStep (graphs, inductor)."""
    return step if mode == "off" else CapturedStep(step, generators)


@contextlib.contextmanager
def loop_stream(step) -> Iterator[None]:
    """The stream a loop runs on: the capture stream for a CapturedStep, the current one otherwise."""
    if isinstance(step, CapturedStep):
        with step.on_side_stream():
            yield
    else:
        yield
