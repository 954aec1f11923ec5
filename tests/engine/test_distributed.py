"""Data parallelism on CPU (gloo): two processes on half batches agree with each other and with one
process on the combined batch; torchrun runs the whole pipeline with one run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from autolora.bench import ddp as bench_ddp
from autolora.engine import distributed
from autolora.engine.distributed import SINGLE, World

STEPS, ROWS, LENGTH = 3, 8, 10  # ROWS per combined batch, split evenly over the processes


def search_then_retrain(world: World, eta: float) -> dict[str, torch.Tensor]:
    """float64: the finite difference divides by a small eps, so float32 rounding of different summation
    orders (two half batches vs one whole) would show up as ~1e-5 differences in alpha."""
    return bench_ddp.search_then_retrain(world, bench_ddp.tiny_model(), eta=eta, steps=STEPS, rows=ROWS,
                                         length=LENGTH, device=torch.device("cpu"), dtype=torch.float64)


def _join(rank: int, size: int, port: int) -> World:
    """What torchrun does for a worker: the environment, then the process group (gloo)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    world = distributed.from_environment()
    distributed.init(world, "cpu")
    return world


def _worker(rank: int, size: int, port: int, eta: float, out: str) -> None:
    world = _join(rank, size, port)
    try:
        result = search_then_retrain(world, eta)
        items = list(range(7))  # an uneven evaluation list: shard, then gather back in order
        result["gathered"] = torch.tensor(world.gather_interleaved([10 * i for i in world.shard(items)]))
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes: 7-9 s each (make test stays under 2 minutes)
@pytest.mark.parametrize("eta", [0.05, 0.0], ids=["second_order", "first_order"])
def test_two_gloo_processes_match_each_other_and_one_process_on_the_combined_batch(tmp_path, eta):
    mp.spawn(_worker, args=(2, _free_port(), eta, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = search_then_retrain(SINGLE, eta)
    alphas = [name for name in single if name.endswith("alpha")]
    assert alphas and len(single) > len(alphas)  # alpha, LoRA factors and the head are all compared
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the processes"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-9, atol=1e-12, msg=f"{name}: 2 processes vs 1")
    assert all(single[name].std() > 1e-4 for name in alphas)  # alpha starts uniform: the steps moved it
    for r in range(2):
        assert ranks[r]["gathered"].tolist() == [10 * i for i in range(7)]


def test_world_rejects_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="search.batch_size=5 does not split over 2 processes"):
        World(rank=0, size=2).per_process(5, "search.batch_size")


@pytest.mark.slow
def test_torchrun_two_processes_one_run_directory(tmp_path):
    """The CLI under torchrun (gloo, CPU): rank 0 writes one complete run directory; rank 1 leaves nothing."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "autolora", "experiment=smoke_sst2_tiny", "seed=0", "logger=none", "progress=false",
               f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert set(json.loads((run_dir / "ranks.json").read_text())["ranks"]) == set(metrics["ranks"])
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("torchelastic_"))  # torchrun's own
    assert left == ["run"]  # no second run dir, no rank-1 scratch left
    assert done.stdout.count("autolora-run  glue/sst2") == 1  # one summary (rank 0)


def _stop_worker(rank: int, size: int, port: int, out: str) -> None:
    """A loop of 50 steps where only rank 1 receives SIGTERM (at step 7)."""
    import signal
    from pathlib import Path

    from autolora.engine.checkpoint import Checkpointer
    from autolora.errors import Interrupted

    world = _join(rank, size, port)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint = Checkpointer(Path(out), every=1000, world=world)
    stopped = None
    try:
        for step in range(1, 51):
            if rank == 1 and step == 7:
                checkpoint.stop.signum = signal.SIGTERM  # what the signal handler records
            checkpoint.after_step("search", step, 50, model, {"w": optimizer}, schedule, {})
    except Interrupted as stop:
        stopped = stop.step
    finally:
        distributed.shutdown()
    Path(out, f"stopped{rank}").write_text(str(stopped))


@pytest.mark.slow  # two processes
def test_a_signal_on_one_process_stops_all_at_the_same_step_and_rank_0_saves(tmp_path):
    mp.spawn(_stop_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    from autolora.engine.checkpoint import STOP_POLL

    assert STOP_POLL > 7  # the stop arrives between two agreement points
    assert [(tmp_path / f"stopped{r}").read_text() for r in range(2)] == [str(STOP_POLL)] * 2
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == STOP_POLL and saved["phase"] == "search"


def test_a_validation_batch_that_does_not_split_is_refused_before_anything_starts():
    """search.val_batch_size is split over the processes like search.batch_size: a size that does not split is a
    one-line config error that names its key, raised before the process group starts."""
    from autolora.errors import ConfigError
    from autolora.runner.preflight import distributed_settings
    from autolora.runner.run_config import build_settings
    from tests.conftest import compose

    settings = build_settings(compose("debug=tiny", "search.val_batch_size=5"))
    with pytest.raises(ConfigError, match="search.val_batch_size=5 does not split over 2 processes"):
        distributed_settings(settings, World(rank=0, size=2))
