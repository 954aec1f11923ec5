"""Resumable training: the state of a loop at a step boundary, saved atomically, restored exactly.

A checkpoint holds the phase (search or retrain), the number of steps done, the trainable parameters
(LoRA factors, head, alpha), the optimiser and schedule states, the loss accumulator and every RNG
state. Data order needs no saved state: pass p over a loader is shuffled with seed + p, so the
position is a function of the step count (`batches_from`). Restored on CPU, a resumed run then takes
the same steps as an uninterrupted one and ends with identical ranks and metrics.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import random
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from autolora.engine.distributed import SINGLE, World
from autolora.errors import CorruptCheckpoint, Interrupted
from autolora.files import write_atomic
from autolora.layout import CHECKPOINT

STOP_POLL = 20  # data-parallel processes agree on a stop request every this many steps (one host sync)


# What every checkpoint holds, and its type; `save` adds each loop's extras.
LAYOUT = {"step": int, "elapsed_s": int | float, "params": dict, "optimizers": dict, "schedule": dict, "rng": dict}

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopFlag:
    """A stop request (SIGINT, SIGTERM, SIGHUP), acted on at the next safe point: a step boundary, or a point
    between phases. The handler only records the signal: an exception raised from a handler lands inside
    whatever library code runs (datasets hashes functions under a bare `except:` and would swallow it, and
    other code could be left half-updated). A second signal takes the default action: stop at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame=None) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        # os.write, not print: a handler may run in the middle of another write to sys.stderr
        os.write(2, f"autolora-run: {signal.Signals(signum).name} received: stopping at the next safe point "
                    "(send it again to stop at once, without saving)\n".encode())

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Route SIGINT/SIGTERM/SIGHUP to this flag for the duration (main thread only: Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def batches_from(loader: DataLoader, seed: int, start: int) -> Iterator:
    """The loader's batches forever, pass p shuffled with seed + p, skipping the first `start` batches."""
    per_pass = len(loader)
    pass_index, skip = divmod(start, per_pass)
    generator = getattr(loader, "generator", None)  # plain lists of batches (tests) have none
    sampler = getattr(loader, "sampler", None)
    while True:
        if hasattr(sampler, "set_epoch"):  # DistributedSampler (seed 0): its shuffle seed is 0 + epoch
            sampler.set_epoch(seed + pass_index)
        elif generator is not None:
            generator.manual_seed(seed + pass_index)
        batches = iter(loader)
        for _ in range(skip):
            next(batches)
        skip = 0
        yield from batches
        pass_index += 1


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain containers (what torch.load(weights_only=True) accepts): NumPy's
    key array becomes an int64 tensor, since a pickled ndarray would need numpy's reconstructor allowed."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Undo rng_state."""
    random.setstate(state["python"])
    saved = state["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a loop changes (LoRA, head, alpha), on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def restore_trainable(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        raise ValueError("checkpoint does not match the model's trainable parameters "
                         f"(missing {sorted(set(params) - set(state))[:3]}, "
                         f"extra {sorted(set(state) - set(params))[:3]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


class Checkpointer:
    """Saves a loop's state every `every` steps, at the end of the loop and when a signal asked it to stop;
    keeps the phase's wall time across resumes. Data parallel: every process reads it, the main process
    writes it, and all stop at the same step (they agree on a stop request every STOP_POLL steps)."""

    def __init__(self, run_dir: Path, every: int, world: World = SINGLE, device: torch.device | None = None,
                 stop: StopFlag | None = None):
        self.path = Path(run_dir) / CHECKPOINT
        self.every = every
        self.world, self.device = world, device or torch.device("cpu")
        self.stop = stop or StopFlag()
        self.prior_s, self.started = 0.0, time.perf_counter()

    def start_phase(self, phase: str) -> None:
        """Start the phase clock, continuing from a saved state of this phase."""
        saved = self.load(phase)
        self.prior_s, self.started = (saved["elapsed_s"] if saved else 0.0), time.perf_counter()

    def elapsed(self) -> float:
        """Seconds spent in the current phase, resumed segments included."""
        return self.prior_s + time.perf_counter() - self.started

    def load(self, phase: str) -> dict[str, Any] | None:
        """The saved state of `phase`, or None when there is none (or it belongs to another phase).
        weights_only: the unpickler builds tensors and plain containers only, so a checkpoint.pt that someone
        else placed in the folder cannot run code when it is read; anything else is a corrupt checkpoint."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "GLOBAL" not in str(err) and "Unsupported global" not in str(err):  # garbage, not objects
                raise CorruptCheckpoint(f"{self.path} cannot be read (UnpicklingError: {str(err).splitlines()[0][:120]}"
                                        "); move it away to restart this phase from its first step") from None
            raise CorruptCheckpoint(f"{self.path} holds objects other than tensors and plain containers, so it "
                                    "is not a checkpoint of this program and was not loaded (unpickling it could "
                                    "run code); move it away to restart this phase from its first step") from None
        except (RuntimeError, EOFError, ValueError, KeyError, AttributeError, OSError) as err:
            raise CorruptCheckpoint(f"{self.path} cannot be read "
                                    f"({type(err).__name__}: {str(err).splitlines()[0][:120]}"
                                    "); move it away to restart this phase from its first step") from None
        if not isinstance(state, dict) or state.get("phase") not in ("search", "retrain"):
            raise CorruptCheckpoint(f"{self.path} is not a checkpoint of this program; move it away to restart "
                                    "this phase from its first step")
        wrong = [key for key, kind in LAYOUT.items() if not isinstance(state.get(key), kind)
                 or isinstance(state.get(key), bool)]
        if wrong or state["step"] < 0 or not all(isinstance(v, torch.Tensor) for v in state["params"].values()):
            raise CorruptCheckpoint(f"{self.path} does not fit this run (key {(wrong or ['step/params'])[0]!r} "
                                    "missing or of the wrong type); move it away to restart this phase from its "
                                    "first step")
        return state if state["phase"] == phase else None

    def save(self, phase: str, step: int, model: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
             schedule, extra: Mapping[str, Any]) -> None:
        if not self.world.is_main:
            return
        state = {"phase": phase, "step": step, "params": trainable_state(model),
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "schedule": schedule.state_dict(), "rng": rng_state(), "elapsed_s": self.elapsed(), **extra}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomic(self.path, lambda f: f.write(buffer.getvalue()), binary=True)

    def after_step(self, phase: str, step: int, total: int, model, optimizers, schedule, extra) -> None:
        """Save when due, at the loop's end (a stop during the evaluation that follows then loses nothing) or
        when asked to stop; raise Interrupted after saving for a stop request."""
        stop = self.stop.signum
        if self.world.distributed:
            stop = self.world.agree_on_stop(stop, self.device) if step % STOP_POLL == 0 or step == total else None
        if stop is not None or step % self.every == 0 or step == total:
            self.save(phase, step, model, optimizers, schedule, extra)
        if stop is not None:
            raise Interrupted(stop, where=f"during the {phase} at step {step}", saved=True, step=step)

    def safe_point(self, where: str, started: bool = True) -> None:
        """Between phases: stop here if a signal asked for it (every process at the same point). What is on
        disk is the run's state: the last checkpoint, ranks.json, the finished outputs. `started`: False before
        the run folder is claimed (nothing written, nothing to resume)."""
        stop = self.stop.signum
        if self.world.distributed and started:  # before the claim the processes may not have met yet
            stop = self.world.agree_on_stop(stop, self.device)
        if stop is not None:
            raise Interrupted(stop, where=where, saved=started and self.path.is_file(), started=started)

    def without_saving(self) -> Checkpointer:
        """The same stop handling for a loop whose state cannot be saved (AdaLoRA's allocator): it stops at a
        step boundary, saves nothing and a resume restarts it."""
        view = copy.copy(self)
        view.save = lambda *args, **kwargs: None
        view.load = lambda phase: None
        return view


def resume_loop(checkpoint: Checkpointer | None, phase: str, model: nn.Module,
                optimizers: Mapping[str, torch.optim.Optimizer], schedule) -> tuple[int, dict[str, Any]]:
    """Restore a loop from its checkpoint: returns (steps already done, the saved extras) or (0, {})."""
    saved = checkpoint.load(phase) if checkpoint is not None else None
    if saved is None:
        return 0, {}
    try:
        restore_trainable(model, saved["params"])
        for key, optimizer in optimizers.items():
            optimizer.load_state_dict(saved["optimizers"][key])
        schedule.load_state_dict(saved["schedule"])
        restore_rng(saved["rng"])
        step = saved["step"]
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r}")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
        # plain containers of the wrong shape (an older layout, or a file made by hand)
        raise CorruptCheckpoint(f"{checkpoint.path} does not fit this run ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:120] if str(err) else ''}); move it away to "
                                "restart this phase from its first step") from None
    return step, saved
