"""hydra/launcher=parallel: a -m sweep's points as processes on this machine, as many at once as fit its GPU.

A MiniLM GLUE run uses a few percent of an H100, so one point at a time leaves the GPU idle. This launcher
(registered with Hydra by hydra_plugins/autolora_parallel) starts up to `jobs` points at once, each its own
process (`python -c 'from autolora.cli.parallel import child; child()'`, the point handed over on stdin), and
admits a point only while the GPU has the memory for it:
- slots: at most floor((free memory - reserve) / per-job memory) points at once, and at most `jobs`. The
  per-job memory is `job_memory_gb`, or (null) measured: the first point runs alone while the free memory is
  polled, and the largest drop below the free memory before it started is its footprint (CUDA context and
  allocator cache included, which torch's peak counters miss);
- before each start the free memory is read again, so another user of the GPU holds back further starts;
- no GPU memory query (no nvidia-smi: a CPU machine) means no memory check: `jobs` at once.
A point's output goes to SWEEP_DIR/.autolora-sweep/parallel/<job number>.log; each point still records its
outcome for the sweep's summary (cli/sweep.py). A point stopped by a signal (exit 128+N) stops further starts.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from autolora.cli.sweep import FOLDER

LOGS = "parallel"  # SWEEP_DIR/.autolora-sweep/parallel/<job number>.log


def by_signal(status: int) -> bool:
    """A point ended by a signal: Popen reports -N for signal N; a shell in between reports 128 + N."""
    return status < 0 or status >= 128


@dataclass(frozen=True)
class Memory:
    """One reading of the GPU's memory (MiB)."""

    free_mib: float
    total_mib: float


class Process(Protocol):
    def poll(self) -> int | None: ...


def gpu_memory(run: Callable = subprocess.run) -> Memory | None:
    """The free and total memory of the GPU the jobs will use (the first of CUDA_VISIBLE_DEVICES, else 0) from
    nvidia-smi, which does not initialise CUDA here; None where there is no such query (no nvidia-smi, no GPU)."""
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    try:
        done = run(["nvidia-smi", "--query-gpu=memory.free,memory.total", "--format=csv,noheader,nounits",
                    f"--id={device}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        free, total = (float(v) for v in done.stdout.strip().splitlines()[0].split(","))
    except (ValueError, IndexError):
        return None
    return Memory(free, total)


def slots(jobs: int, free_mib: float, per_job_mib: float | None, reserve_mib: float) -> int:
    """Points at once: `jobs`, fewer where the free memory (less the reserve) holds fewer; at least 1 (one
    point at a time is what a sweep did before, fit or not)."""
    if per_job_mib is None or per_job_mib <= 0:
        return jobs
    return max(1, min(jobs, math.floor((free_mib - reserve_mib) / per_job_mib)))


@dataclass
class Scheduler:
    """Runs `n` points through `start(index) -> Process` under the rules of the module docstring."""

    jobs: int
    per_job_mib: float | None  # None: measured on the first point
    reserve_mib: float
    memory: Callable[[], Memory | None]
    start: Callable[[int], Process]
    poll_s: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    say: Callable[[str], None] = print

    def run(self, n: int) -> list[int | None]:
        """Exit status per point (None: not started, because a point was stopped by a signal)."""
        statuses: list[int | None] = [None] * n
        running: dict[int, Process] = {}
        reading = self.memory()
        if reading is None:
            self.say(f"parallel: no GPU memory query (nvidia-smi): {self.jobs} points at once, no memory check")
        nxt, at_once, stopped = 0, self.jobs, False
        if reading is not None and self.per_job_mib is None and n > 1:
            statuses[0] = self._measure_first(reading)
            nxt = 1
            stopped = statuses[0] is not None and by_signal(statuses[0])
        if reading is not None:
            at_once = slots(self.jobs, self.memory_now(reading).free_mib, self.per_job_mib, self.reserve_mib)
            self.say(f"parallel: {at_once} points at once (jobs={self.jobs}, "
                     f"~{(self.per_job_mib or 0) / 1024:.1f} GiB each, {reading.free_mib / 1024:.1f} GiB free)")
        while (nxt < n and not stopped) or running:
            for index, process in list(running.items()):
                status = process.poll()
                if status is not None:
                    statuses[index] = status
                    del running[index]
                    stopped |= by_signal(status)
            if nxt < n and not stopped and len(running) < at_once and self._fits(len(running)):
                running[nxt] = self.start(nxt)
                nxt += 1
                continue
            self.sleep(self.poll_s)
        return statuses

    def memory_now(self, before: Memory) -> Memory:
        return self.memory() or before

    def _fits(self, running: int) -> bool:
        """Whether the GPU has room for one more point now (always for the first, or without a query)."""
        if running == 0 or self.per_job_mib is None:
            return True
        reading = self.memory()
        return reading is None or reading.free_mib - self.reserve_mib >= self.per_job_mib

    def _measure_first(self, before: Memory) -> int:
        """Run point 0 alone, polling the free memory; its largest drop sets per_job_mib."""
        process, lowest = self.start(0), before.free_mib
        while (status := process.poll()) is None:
            self.sleep(self.poll_s)
            lowest = min(lowest, self.memory_now(before).free_mib)
        self.per_job_mib = max(before.free_mib - lowest, 0.0)
        self.say(f"parallel: the first point used ~{self.per_job_mib / 1024:.2f} GiB of GPU memory")
        return status


def start_point(payload: bytes, log: Path, threads: int) -> subprocess.Popen:
    """One point as a child process: the pickled point on its stdin, its output in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", str(threads))  # N processes on the machine's cores, not N x all of them
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-c", "from autolora.cli.parallel import child; child()"],
                                   stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env)
    stdin: IO[bytes] = process.stdin  # type: ignore[assignment]
    stdin.write(payload)
    stdin.close()
    return process


def launch(payloads: Sequence[bytes], numbers: Sequence[int], sweep_dir: Path, *, jobs: int,
           job_memory_gb: float | None, reserve_gb: float, poll_s: float) -> list[int | None]:
    """Run the points (pickled by the Hydra launcher) with the memory check; exit status per point."""
    if jobs < 1:
        raise ValueError(f"hydra.launcher.jobs must be >= 1, got {jobs}")
    logs = Path(sweep_dir) / FOLDER / LOGS
    threads = max(1, (os.cpu_count() or 1) // min(jobs, len(payloads)))
    scheduler = Scheduler(jobs=jobs, per_job_mib=None if job_memory_gb is None else job_memory_gb * 1024,
                          reserve_mib=reserve_gb * 1024, memory=gpu_memory, poll_s=poll_s,
                          start=lambda i: start_point(payloads[i], logs / f"{numbers[i]}.log", threads),
                          say=lambda text: print(text, file=sys.stderr, flush=True))
    return scheduler.run(len(payloads))


def child() -> None:
    """A point in its own process: the Hydra job the launcher pickled, run as Hydra's own launchers run it."""
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    hydra_context, task_function, config, overrides, number, state = cloudpickle.loads(sys.stdin.buffer.read())
    Singleton.set_state(state)
    setup_globals()
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config.hydra.job) as job:
        job.id, job.num = f"parallel_{number}", number
    outcome = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    outcome.return_value  # noqa: B018 (raises the job's exception: a crash exits 1, with its traceback in the log)
