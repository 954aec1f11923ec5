"""Helpers of the failure tests (bad input, kills and resumes, sweeps): tiny data folders, fake run
folders, and a child process that is killed or signalled at a chosen call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TINY = ["debug=tiny"]


def glue_files(root, train: str, dev: str = "0\ta\tb\tentailment\n"):
    """A glue/RTE folder (data.data_dir's layout) with the given data rows under the official header."""
    folder = root / "glue" / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (folder / "train.tsv").write_text(header + train)
    if dev is not None:
        (folder / "dev.tsv").write_text(header + dev)
    return root


GOOD_ROWS = "".join(f"{i}\tsentence {i}\tother {i}\t{'entailment' if i % 2 else 'not_entailment'}\n" for i in range(8))


TINY_MATRICES = [f"roberta.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


def ranks_file(path, ranks, **extra):
    path.write_text(json.dumps({**extra, "ranks": ranks}))
    return path


KILLER = """
import os, signal, sys, time
from autolora import files
from autolora.runner import job as runner_job
from autolora.runner import preflight
from autolora.method import search
from autolora.method import train
phase, at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def signal_at(module, name, signum, hold=0.0):  # send signum to this process when the at-th call starts
    original, calls = getattr(module, name), [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            if signum:
                os.kill(os.getpid(), signum)
            time.sleep(hold)
        return original(*args, **kwargs)
    setattr(module, name, wrapped)

def kill_after(module, name):
    original, calls = getattr(module, name), [0]
    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(module, name, wrapped)

def signal_in_datasets(signum):  # the signal arrives while `datasets` runs code under its bare `except:`
    from datasets import fingerprint
    original_evaluate, sent = runner_job.Job.evaluate, [False]
    class Transform:  # datasets pickles a transform to hash it, inside `try: ... except:`
        def __reduce__(self):
            os.kill(os.getpid(), signum)  # the handler runs before this returns: inside the try
            return (int, ())
    def evaluate(self, *args, **kwargs):
        if not sent[0]:
            sent[0] = True
            fingerprint.update_fingerprint("0" * 16, Transform(), {})
        return original_evaluate(self, *args, **kwargs)
    runner_job.Job.evaluate = evaluate

if phase.startswith("signal:"):  # signal:NAME:WHERE (WHERE: evaluate, load, retrain)
    _, name, where = phase.split(":")
    if where == "evaluate":
        signal_in_datasets(getattr(signal, name))
    else:
        signal_at(*{"load": (preflight, "check_labels"), "retrain": (train, "train_step")}[where], \
getattr(signal, name))
elif phase == "hold":  # sleep 8 s in the at-th search step: the run holds its folder meanwhile
    signal_at(search, "search_update", 0, hold=8.0)
elif phase == "search":
    kill_after(search, "search_update")
elif phase == "retrain":
    kill_after(train, "train_step")
elif phase == "replace":  # die just before the at-th atomic rename: the temp file is written, the target is not
    original, calls = files.os.replace, [0]
    class Os:
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(src, dst)
    files.os = Os()
sys.argv = ["autolora-run", *overrides]
from autolora.cli.main import main
main()
"""
LONGER = [*TINY, "data.max_train_samples=64", "search.epochs=3", "retrain.epochs=2", "checkpoint_every=3"]


def env() -> dict[str, str]:
    """The child's environment: this process's now (tests set variables with monkeypatch), this checkout's code."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def launch(phase: str, at: int, overrides: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, phase, str(at), *overrides], capture_output=True,
                          text=True, cwd=cwd, env=env(), timeout=300)


def events(run_dir) -> list[tuple]:
    return [(e["phase"], e["step"], e.get("train_loss"), e.get("val_loss"))
            for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())]


def snapshot(folder) -> dict:
    """Every file under folder: relative path -> (bytes, mtime): equal snapshots mean nothing was touched."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def fake_run(folder, *overrides, finished=False):
    """A run folder as autolora-run leaves it (marker, config of these overrides, .hydra/, outputs)."""
    from conftest import compose
    from omegaconf import OmegaConf

    cfg = compose(*overrides)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".autolora-run").write_text(json.dumps({"created": "then"}))  # no data fingerprint: not compared
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (folder / ".hydra" / "overrides.yaml").write_text("- the original command\n")
    (folder / "ranks.json").write_text(json.dumps({"ranks": dict.fromkeys(TINY_MATRICES, 1), "search": {}}))
    (folder / "adapter").mkdir()
    (folder / "adapter" / "notes.txt").write_text("the user's own file")
    if finished:
        (folder / "metrics.json").write_text("{}")
    return folder


def many_rows(count: int) -> str:
    return "".join(f"{i}\tsentence {i}\tother {i}\t{'entailment' if i % 2 else 'not_entailment'}\n"
                   for i in range(count))


def job_number(folder: Path) -> str:
    """A sweep job folder's number (folders are <n>_<overrides>)."""
    return folder.name.split("_", 1)[0]


def job(sweep: Path, number: int) -> Path:
    """The folder of sweep job `number`."""
    (found,) = [p for p in sweep.iterdir() if p.is_dir() and job_number(p) == str(number)]
    return found
