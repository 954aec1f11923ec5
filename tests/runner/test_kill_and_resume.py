"""A killed or signalled run resumes to the same result; no output is half-written; two processes never
write one run; a resume refuses data changed since the kill."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from harness import (
    KILLER,
    LONGER,
    TINY,
    env,
    events,
    glue_files,
    launch,
    many_rows,
    snapshot,
)

from autolora.cli.main import main


@pytest.mark.slow
def test_sigkill_in_search_and_in_retrain_then_resume_gives_identical_results(tmp_path):
    """SIGKILL at search step 7 (checkpoint at 6), resume, SIGKILL at retrain step 11 (checkpoint at 9),
    resume: ranks, gates, dev metrics and the logged losses equal those of an uninterrupted run."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert launch("none", 0, [*LONGER, f"hydra.run.dir={reference}"], tmp_path).returncode == 0
    first = launch("search", 7, [*LONGER, f"hydra.run.dir={resumed}"], tmp_path)
    assert first.returncode == -9 and not (resumed / "ranks.json").exists()
    holder = (resumed / ".autolora-lock").read_text().split()
    assert holder[2] == "pid" and not os.path.exists(f"/proc/{holder[3]}")  # a dead process's lock: not stale
    second = launch("retrain", 11, [*LONGER, f"hydra.run.dir={resumed}", "resume=true"], tmp_path)
    assert second.returncode == -9 and (resumed / "ranks.json").exists(), second.stderr[-2000:]
    assert not (resumed / "metrics.json").exists()
    third = launch("none", 0, [*LONGER, f"hydra.run.dir={resumed}", "resume=true"], tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    ref_ranks, got_ranks = (json.loads((d / "ranks.json").read_text()) for d in (reference, resumed))
    assert got_ranks["ranks"] == ref_ranks["ranks"] and got_ranks["alpha"] == ref_ranks["alpha"]
    ref_metrics, got_metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, resumed))
    assert got_metrics["retrain"]["dev"] == ref_metrics["retrain"]["dev"]
    assert events(resumed) == events(reference)  # every step logged once, with the same losses


@pytest.mark.slow
def test_resume_refuses_a_finished_run_and_a_changed_config(tmp_path, capsys):
    """resume=true on a finished run, or with another config, stops with status 2 and says why."""
    run_dir = tmp_path / "run"
    assert launch("search", 3, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path).returncode == -9
    changed = launch("none", 0, [*LONGER, "search.k=4", f"hydra.run.dir={run_dir}", "resume=true"], tmp_path)
    assert changed.returncode == 2 and "the config differs" in changed.stderr and "search.k" in changed.stderr
    assert launch("none", 0, [*LONGER, f"hydra.run.dir={run_dir}", "resume=true"], tmp_path).returncode == 0
    again = launch("none", 0, [*LONGER, f"hydra.run.dir={run_dir}", "resume=true"], tmp_path)
    assert again.returncode == 2 and "finished run" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("at", [1, 2, 3, 5, 8, 12])
def test_no_output_is_half_written_after_sigkill(tmp_path, at):
    """Killed just before its at-th atomic rename, a run leaves only whole files: every JSON and YAML parses,
    the checkpoint loads, events.jsonl holds whole lines, adapter/ and base_model/ are complete or absent."""
    import yaml

    run_dir = tmp_path / "run"
    result = launch("replace", at, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == -9, result.stderr[-1000:]
    for path in run_dir.glob("*.json"):
        json.loads(path.read_text())
    for path in run_dir.glob("*.yaml"):
        yaml.safe_load(path.read_text())
    if (run_dir / "checkpoint.pt").exists():
        assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["phase"] in ("search", "retrain")
    if (run_dir / "events.jsonl").exists():
        for line in (run_dir / "events.jsonl").read_text().splitlines():
            json.loads(line)
    for folder, needed in (("adapter", "adapter_config.json"), ("base_model", "config.json")):
        assert not (run_dir / folder).exists() or (run_dir / folder / needed).is_file()


def test_save_dir_replaces_a_folder_left_by_a_killed_resumed_run(tmp_path):
    """A run killed after its adapter folder appeared but before metrics.json rewrites it on resume."""
    from autolora.runner.outputs import save_dir

    target = tmp_path / "adapter"
    save_dir(target, lambda d: (d.mkdir(), (d / "old.txt").write_text("old")))
    (tmp_path / ".adapter.tmp").mkdir()  # a staging folder left by a kill
    save_dir(target, lambda d: (d.mkdir(), (d / "new.txt").write_text("new")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


@pytest.mark.slow
def test_a_requeued_slurm_job_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """submitit reruns a requeued job with the same command in the same directory (no resume=true):
    it continues from the checkpoint and finishes; outside submitit the directory is refused."""
    run_dir = tmp_path / "run"
    assert launch("search", 5, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path).returncode == -9
    refused = launch("none", 0, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path)
    assert refused.returncode == 2 and "already holds an unfinished run" in refused.stderr
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    again = launch("none", 0, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    steps = [e[1] for e in events(run_dir) if e[0] == "search"]
    assert steps == sorted(set(steps)) and (run_dir / "metrics.json").is_file()  # each step logged once


def test_a_stop_request_waits_for_a_safe_point_and_the_loop_end_is_saved(tmp_path):
    """Defect 5: the signal handler only records the signal (an exception raised inside library code can be
    swallowed); the next step boundary saves and stops, a safe point between phases stops; a loop's last step
    is always saved, so a stop during the evaluation after it loses nothing."""
    import signal

    import torch

    from autolora.engine.checkpoint import Checkpointer, StopFlag
    from autolora.errors import Interrupted

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stop = StopFlag()
    checkpoint = Checkpointer(tmp_path, every=100, stop=stop)
    checkpoint.after_step("search", 5, 5, model, {"w": optimizer}, schedule, {})  # the loop's end
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 5
    stop.handle(signal.SIGTERM)  # what the kernel's delivery runs; it must not raise
    with pytest.raises(Interrupted, match="SIGTERM after the search") as interrupted:
        checkpoint.safe_point("after the search")
    assert interrupted.value.signum == signal.SIGTERM and interrupted.value.saved
    with pytest.raises(Interrupted, match="during the retrain at step 3") as interrupted:
        checkpoint.after_step("retrain", 3, 9, model, {"w": optimizer}, schedule, {})
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["phase"] == "retrain"


@pytest.mark.slow
def test_a_signal_at_any_point_saves_the_state_and_exits_128_plus_n(tmp_path):
    """Defect 5: SIGTERM while the search is being evaluated (inside `datasets`, whose bare `except:` swallowed
    the old handler's SystemExit) stops after the evaluation with exit 143 and the end-of-search checkpoint;
    SIGINT in the retrain exits 130 with a retrain checkpoint; SIGHUP while the data loads exits 129 with
    nothing written. Resumed twice, the run ends equal to an uninterrupted one."""
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert launch("none", 0, [*TINY, f"hydra.run.dir={reference}"], tmp_path).returncode == 0
    first = launch("signal:SIGTERM:evaluate", 1, [*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    assert first.returncode == 143, first.stderr[-2000:]
    assert "interrupted by SIGTERM after the search's evaluation; state saved in" in first.stderr
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert (saved["phase"], saved["step"]) == ("search", 2) and not (run_dir / "ranks.json").exists()
    second = launch("signal:SIGINT:retrain", 2, [*TINY, "resume=true", f"hydra.run.dir={run_dir}"], tmp_path)
    assert second.returncode == 130 and "interrupted by SIGINT during the retrain at step 2" in second.stderr
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["phase"] == "retrain"
    third = launch("none", 0, [*TINY, "resume=true", f"hydra.run.dir={run_dir}"], tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    ref_metrics, got_metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, run_dir))
    assert (got_metrics["ranks"] == ref_metrics["ranks"]
            and got_metrics["retrain"]["dev"] == ref_metrics["retrain"]["dev"])
    assert events(run_dir) == events(reference)
    early = launch("signal:SIGHUP:load", 1, [*TINY, f"hydra.run.dir={tmp_path / 'early'}"], tmp_path)
    assert (early.returncode == 129
            and "interrupted by SIGHUP before the run started; nothing was written" in early.stderr)
    assert not (tmp_path / "early").exists()


@pytest.mark.slow
def test_two_resumes_of_one_run_do_not_both_write(tmp_path):
    """Defects 4 and 8: while one resume holds the run (its lock), a second resume of the same run is refused
    with the holder's pid and writes nothing, .hydra/ included; the first finishes with every step logged once."""
    run_dir = tmp_path / "run"
    assert launch("search", 5, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path).returncode == -9
    args = [*LONGER, "resume=true", f"hydra.run.dir={run_dir}"]
    holder = subprocess.Popen([sys.executable, "-c", KILLER, "hold", "1", *args], cwd=tmp_path, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = run_dir / ".autolora-lock"
    deadline = time.time() + 120
    while f"pid {holder.pid} " not in (lock.read_text() if lock.exists() else "") and time.time() < deadline:
        time.sleep(0.2)
    hydra_files = snapshot(run_dir / ".hydra")
    second = launch("none", 0, args, tmp_path)
    assert snapshot(run_dir / ".hydra") == hydra_files  # the refused command did not rewrite the run's record
    _, holder_err = holder.communicate(timeout=300)
    assert (second.returncode == 2
            and f"is in use by another run (host {socket.gethostname()} pid {holder.pid}" in second.stderr)
    assert holder.returncode == 0, holder_err[-2000:]
    steps = [(phase, step) for phase, step, *_ in events(run_dir)]
    assert len(steps) == len(set(steps)) and (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_resume_refuses_data_changed_since_the_kill(tmp_path):
    """Defect 9: a run killed mid-search whose training file then changes in place is not resumed (the result
    would mix two datasets); the message names the file. With the file restored it resumes."""
    data = glue_files(tmp_path / "data", many_rows(80))
    args = [*LONGER, "task=glue/rte", f"data.data_dir={data}", f"hydra.run.dir={tmp_path / 'run'}"]
    assert launch("search", 5, args, tmp_path).returncode == -9
    train_file = data / "glue" / "RTE" / "train.tsv"
    original = train_file.read_text()
    train_file.write_text(original.replace("sentence 3\t", "sentence three\t"))
    refused = launch("none", 0, [*args, "resume=true"], tmp_path)
    assert refused.returncode == 2
    assert f"the data changed since the run started: {train_file.resolve()} changed" in refused.stderr
    train_file.write_text(original)
    assert launch("none", 0, [*args, "resume=true"], tmp_path).returncode == 0


def test_resume_without_run_dir_continues_the_newest_unfinished_run(tmp_path, capsys, monkeypatch):
    """resume=true alone, in a fresh process (no Hydra config set yet), finds the unfinished run beside the
    folder a new run would get, and finishes it there instead of starting another."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.chdir(tmp_path)
    sys.argv = ["autolora-run", *TINY]
    main()
    [first] = (tmp_path / "outputs").rglob("metrics.json")
    finished = json.loads(first.read_text())
    first.unlink()  # as if killed after the adapter was written
    HydraConfig.instance().cfg = None  # what a new process starts with
    sys.argv = ["autolora-run", *TINY, "resume=true"]
    main()
    assert "error" not in capsys.readouterr().err
    assert [p.parent for p in (tmp_path / "outputs").rglob(".autolora-run")] == [first.parent]
    assert json.loads(first.read_text())["ranks"] == finished["ranks"]
