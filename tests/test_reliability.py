"""Bad input costs one line and exit status 2; a killed run resumes to the same result; no file is half-written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from autolora.run import main

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


def bad_inputs(tmp_path):
    """(case, overrides, message) for every bad input of the reliability issue."""
    ranks = tmp_path / "other_ranks.json"
    ranks.write_text(json.dumps({"ranks": {"transformer.h.0.attn.c_attn:q": 2}}))
    malformed = glue_files(tmp_path / "bad", GOOD_ROWS + "9\tonly two\n")
    unknown_label = glue_files(tmp_path / "lab", GOOD_ROWS + "9\ta\tb\tmaybe\n")
    return [
        ("unknown task", ["task=glue/nope"], r"unknown task 'glue/nope'; choose one of: e2e, generation, glue/cola"),
        ("unknown model", ["model=bert-tiny"], r"unknown model 'bert-tiny'; choose one of: gpt2"),
        ("unknown method", [*TINY, "method=grid"], r"method must be one of \('autolora', 'lora', 'adalora'\), got 'grid'"),
        ("unknown key", ["search.kk=3"], r"unknown config key 'search.kk'"),
        ("missing data dir", [*TINY, "task=glue/rte", f"data.data_dir={tmp_path / 'nowhere'}"], r"nowhere/glue/RTE: no such folder"),
        ("missing file", [*TINY, "task=glue/rte", f"data.data_dir={glue_files(tmp_path / 'nofile', GOOD_ROWS, None)}"],
         r"RTE/dev.tsv: file not found"),
        ("malformed row", [*TINY, "task=glue/rte", f"data.data_dir={malformed}"],
         r"RTE/train.tsv:10: expected 4 tab-separated fields, found 2"),
        ("unknown label", [*TINY, "task=glue/rte", f"data.data_dir={unknown_label}"],
         r"RTE/train.tsv:10: label 'maybe' is not one of"),
        ("empty split", [*TINY, "task=glue/rte", f"data.data_dir={glue_files(tmp_path / 'empty', '')}"],
         r"RTE/train.tsv: no data rows"),
        ("k < 1", [*TINY, "search.k=0"], r"search.k must be >= 1, got 0"),
        ("threshold", [*TINY, "search.threshold=1.5"], r"search.threshold must lie in \(0, 1\], got 1.5"),
        ("val_fraction", [*TINY, "search.val_fraction=1.0"], r"search.val_fraction must lie in \(0, 1\), got 1.0"),
        ("max length", [*TINY, "task.max_length=3"], r"task.max_length=3 is too small for glue/sst2"),
        ("wrong type", [*TINY, "search.alpha_lr=fast"], r"search.alpha_lr must be float, got .fast."),
        ("ranks file", [*TINY, f"search.ranks_file={ranks}"], r"not in the model \['transformer.h.0.attn.c_attn:q'\]"),
        ("cuda absent", [*TINY, "device=cuda"], r"device=cuda but no CUDA device is visible"),
    ]


def test_every_bad_input_is_one_line_with_status_2(tmp_path, capsys):
    """Each bad input of the table: exit status 2, one 'autolora-run: error:' line naming the problem,
    no traceback, and the run directory holds no results."""
    for index, (case, overrides, message) in enumerate(bad_inputs(tmp_path)):
        if case == "cuda absent" and torch.cuda.is_available():
            continue
        run_dir = tmp_path / f"run{index}"
        sys.argv = ["autolora-run", *overrides, f"hydra.run.dir={run_dir}"]
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2, (case, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("autolora-run: error: "), (case, err)
        assert re.search(message, lines[0]), (case, lines[0])
        assert not (run_dir / "metrics.json").exists() and not (run_dir / "ranks.json").exists(), case


def test_non_finite_loss_stops_the_run_without_ranks(tmp_path, capsys):
    """An exploding learning rate makes the loss NaN: exit 3 with a message, and no ranks.json is written."""
    run_dir = tmp_path / "nan"
    sys.argv = ["autolora-run", *TINY, "search.lr=1e30", "search.alpha_lr=1e30", "search.epochs=3",
                "data.max_train_samples=64", f"hydra.run.dir={run_dir}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 3 and "non-finite" in err, err
    assert not (run_dir / "ranks.json").exists() and not (run_dir / "metrics.json").exists()


KILLER = """
import os, signal, sys
from autolora import files, search, train
phase, at, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def kill_after(module, name):
    original, calls = getattr(module, name), [0]
    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(module, name, wrapped)

if phase == "search":
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
from autolora.run import main
main()
"""
LONGER = [*TINY, "data.max_train_samples=64", "search.epochs=3", "retrain.epochs=2", "checkpoint_every=3"]


def launch(phase: str, at: int, overrides: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", KILLER, phase, str(at), *overrides], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def events(run_dir) -> list[tuple]:
    return [(e["phase"], e["step"], e.get("train_loss"), e.get("val_loss"))
            for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())]


@pytest.mark.slow
def test_sigkill_in_search_and_in_retrain_then_resume_gives_identical_results(tmp_path):
    """SIGKILL at search step 7 (checkpoint at 6), resume, SIGKILL at retrain step 11 (checkpoint at 9),
    resume: ranks, gates, dev metrics and the logged losses equal those of an uninterrupted run."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert launch("none", 0, [*LONGER, f"hydra.run.dir={reference}"], tmp_path).returncode == 0
    first = launch("search", 7, [*LONGER, f"hydra.run.dir={resumed}"], tmp_path)
    assert first.returncode == -9 and not (resumed / "ranks.json").exists()
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
        assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["phase"] in ("search", "retrain")
    if (run_dir / "events.jsonl").exists():
        for line in (run_dir / "events.jsonl").read_text().splitlines():
            json.loads(line)
    for folder, needed in (("adapter", "adapter_config.json"), ("base_model", "config.json")):
        assert not (run_dir / folder).exists() or (run_dir / folder / needed).is_file()


def test_save_dir_replaces_a_folder_left_by_a_killed_resumed_run(tmp_path):
    """A run killed after its adapter folder appeared but before metrics.json rewrites it on resume."""
    from autolora.pipeline import save_dir

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
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    again = launch("none", 0, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    steps = [e[1] for e in events(run_dir) if e[0] == "search"]
    assert steps == sorted(set(steps)) and (run_dir / "metrics.json").is_file()  # each step logged once
