"""hydra/launcher=parallel (cli/parallel.py): how many sweep points run at once, from a fake GPU memory query
and fake processes; and one real two-point sweep through the launcher on CPU (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO

from autolora.cli import parallel

GIB = 1024.0


class World:
    """A GPU of `total` MiB whose points each hold `per_point` MiB while they run (another user: `other`), and
    points that finish `duration` seconds after they start (the clock moves only in `sleep`) with `status`."""

    def __init__(self, total=80 * GIB, per_point=9 * GIB, duration=10.0, statuses=None):
        self.total, self.per_point, self.duration, self.other = total, per_point, duration, 0.0
        self.statuses = statuses or {}
        self.clock = 0.0
        self.running: set[int] = set()
        self.started: list[int] = []
        self.most = 0

    def sleep(self, seconds):
        self.clock += seconds

    def memory(self):
        return parallel.Memory(self.total - self.other - self.per_point * len(self.running), self.total)

    def start(self, index):
        self.running.add(index)
        self.started.append(index)
        self.most = max(self.most, len(self.running))
        world, ends = self, self.clock + self.duration

        class Point:
            def poll(self):
                if world.clock < ends:
                    return None
                world.running.discard(index)
                return world.statuses.get(index, 0)

        return Point()


def scheduler(world, jobs=8, per_job_mib=None, reserve_mib=2 * GIB, memory=None):
    return parallel.Scheduler(jobs=jobs, per_job_mib=per_job_mib, reserve_mib=reserve_mib,
                              memory=memory or world.memory, start=world.start, sleep=world.sleep,
                              say=lambda text: None)


def test_slots_are_bounded_by_jobs_and_by_memory():
    """floor((free - reserve) / per job), at most jobs, at least 1; no estimate: jobs."""
    assert parallel.slots(8, 80 * GIB, 10 * GIB, 2 * GIB) == 7
    assert parallel.slots(4, 80 * GIB, 10 * GIB, 2 * GIB) == 4
    assert parallel.slots(8, 5 * GIB, 10 * GIB, 2 * GIB) == 1
    assert parallel.slots(8, 5 * GIB, None, 2 * GIB) == 8


def test_a_given_per_job_memory_caps_the_points_at_once():
    """40 GiB free, 10 GiB a point, 2 GiB reserve: 3 at once though jobs=8; every point runs and succeeds."""
    world = World(total=40 * GIB, per_point=10 * GIB)
    statuses = scheduler(world, per_job_mib=10 * GIB).run(7)
    assert statuses == [0] * 7 and world.most == 3 and sorted(world.started) == list(range(7))


def test_the_first_point_runs_alone_and_its_footprint_sets_the_rest():
    """No estimate: point 0 runs alone, its 9 GiB drop in free memory is measured, then 8 at once fit."""
    world = World()
    sched = scheduler(world)
    assert sched.run(10) == [0] * 10
    assert world.started[0] == 0 and sched.per_job_mib == 9 * GIB
    assert world.most == 8  # floor((80 - 2) / 9) = 8 = jobs


def test_another_user_of_the_gpu_holds_back_new_points():
    """Free memory read before each start: while someone else holds most of the GPU only one point runs."""
    world = World(total=40 * GIB, per_point=5 * GIB)
    world.other = 30 * GIB  # 10 GiB free: room for one point beside the reserve
    statuses = scheduler(world, per_job_mib=5 * GIB).run(4)
    assert statuses == [0] * 4 and world.most == 1


def test_without_a_memory_query_jobs_run_at_once():
    """A CPU machine (no nvidia-smi): `jobs` points at once, no check."""
    world = World()
    assert scheduler(world, jobs=3, memory=lambda: None).run(5) == [0] * 5 and world.most == 3


def test_a_point_stopped_by_a_signal_stops_further_starts():
    """Exit 130 (SIGINT) of the measured first point: nothing else starts; unstarted points report None."""
    world = World(statuses={0: 130})
    assert scheduler(world).run(3) == [130, None, None] and world.started == [0]


def test_a_point_killed_by_a_signal_is_seen_as_popen_reports_it():
    """Popen reports SIGKILL (the OOM killer) as -9, not 137: that stops further starts too."""
    world = World(statuses={0: -9})
    assert scheduler(world).run(3) == [-9, None, None] and world.started == [0]


def test_a_failed_point_does_not_stop_the_others():
    """Exit 2 (bad input) of one point: the rest run."""
    world = World(statuses={1: 2})
    assert scheduler(world, per_job_mib=GIB).run(4) == [0, 2, 0, 0]


def test_gpu_memory_reads_nvidia_smi_and_none_without_it(monkeypatch):
    """nvidia-smi's csv line becomes MiB; a missing binary or a failing query means no check."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    calls = []

    def fake(command, **kwargs):
        calls.append(command)
        return SimpleNamespace(returncode=0, stdout="80000, 81559\n")

    assert parallel.gpu_memory(fake) == parallel.Memory(80000.0, 81559.0)
    assert "--id=1" in calls[0]

    def missing(command, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    assert parallel.gpu_memory(missing) is None
    assert parallel.gpu_memory(lambda c, **k: SimpleNamespace(returncode=9, stdout="")) is None


@pytest.mark.slow
def test_a_sweep_through_the_parallel_launcher_runs_every_point(tmp_path):
    """autolora-run -m hydra/launcher=parallel: both points run (as child processes), each writes its
    metrics.json and its log; the sweep's summary counts them."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-m", "autolora", "-m", "hydra/launcher=parallel", "hydra.launcher.jobs=2",
                           "debug=tiny", "seed=0,1", "logger=none", "progress=false", f"hydra.sweep.dir={sweep}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 points, 2 done" in done.stderr
    metrics = sorted(sweep.glob("*/metrics.json"))
    assert [json.loads(m.read_text())["seed"] for m in metrics] == [0, 1]
    assert sorted(p.name for p in (sweep / ".autolora-sweep" / "parallel").iterdir()) == ["0.log", "1.log"]
