"""The runner end to end on CPU: the run directory, the three ways of getting ranks, errors, determinism."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose

from autolora.errors import ConfigError
from autolora.runner.pipeline import execute
from autolora.runner.summary import summary_text

TINY = ("debug=tiny",)


def run_in(tmp_path, *overrides: str, name: str = "run"):
    """Compose, run the whole pipeline into tmp_path/name, return (record, run_dir)."""
    run_dir = tmp_path / name
    return execute(compose(*TINY, *overrides), run_dir), run_dir


def test_full_pipeline_writes_the_run_directory(tmp_path):
    """search -> ranks -> retrain -> evaluate: every artefact is there, the 2-step search warns that its ranks
    are unchecked (too short for the noise test), and the adapter loads in plain peft with exactly the ranks of
    ranks.json."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForSequenceClassification

    record, run_dir = run_in(tmp_path)
    for name in ("config.yaml", "ranks.json", "alpha.json", "metrics.json", "events.jsonl", "ranks.png", "adapter"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["search"]) >= {"dev", "wall_time_s", "gpu_seconds", "peak_memory_mib", "trainable_params",
                                      "steps"}
    assert "noise test not run" in metrics["search"]["warning"] and len(metrics["search"]["diagnostics"]["gates"]) == 4
    assert metrics["search"]["noise_test"]["verdict"] == "not tested"
    assert 0 <= metrics["retrain"]["dev"]["accuracy"] <= 1 and metrics["versions"]["torch"] == torch.__version__
    ranks = json.loads((run_dir / "ranks.json").read_text())["ranks"]
    assert ranks == metrics["ranks"] and len(ranks) == 4
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert {e["phase"] for e in events} == {"search", "retrain"}
    base = AutoModelForSequenceClassification.from_pretrained(run_dir / "base_model")
    peft_model = PeftModel.from_pretrained(base, run_dir / "adapter")
    built = {n: m.r["default"] for n, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)}
    assert built == {n: r for n, r in ranks.items() if r}


def test_lora_method_and_ranks_file_skip_the_search(tmp_path):
    """method=lora uses lora.r everywhere; search.ranks_file retrains at the ranks of an earlier run."""
    record, _ = run_in(tmp_path, "method=lora", "lora.r=3", name="lora")
    assert set(record["ranks"].values()) == {3} and "search" not in record and record["ranks_from"] == "uniform"
    first, first_dir = run_in(tmp_path, "search.k=4", name="search")
    second, _ = run_in(tmp_path, f"search.ranks_file={first_dir / 'ranks.json'}", name="reuse")
    assert second["ranks"] == first["ranks"] and "search" not in second
    assert (first["ranks_from"], second["ranks_from"]) == ("search", "ranks_file")


def test_ranks_readout_retrains_at_one_readout_of_the_file(tmp_path):
    """search.ranks_readout=budget retrains at the ranks.json's budget readout, not at its "ranks" (gates),
    and metrics.json and the summary say which readout it was; without ranks_file the key is refused."""
    first, first_dir = run_in(tmp_path, "search.k=4", name="search")
    saved = json.loads((first_dir / "ranks.json").read_text())
    second, second_dir = run_in(tmp_path, f"search.ranks_file={first_dir / 'ranks.json'}",
                                "search.ranks_readout=budget", name="budget")
    assert saved["readouts"]["budget"] != saved["ranks"]  # else the test could not tell the two apart
    assert second["ranks"] == saved["readouts"]["budget"] and second["ranks_readout"] == "budget"
    assert "its budget readout" in summary_text(second, second_dir)
    with pytest.raises(ConfigError, match="search.ranks_readout picks a readout"):
        run_in(tmp_path, "search.ranks_readout=budget", name="alone")


def test_same_seed_same_ranks_and_metrics(tmp_path):
    """Determinism on CPU: two runs with one seed give identical ranks, gates and dev metrics."""
    a, a_dir = run_in(tmp_path, "search.epochs=2", name="a")
    b, b_dir = run_in(tmp_path, "search.epochs=2", name="b")
    assert a["ranks"] == b["ranks"] and a["retrain"]["dev"] == b["retrain"]["dev"]
    assert (a_dir / "alpha.json").read_text() == (b_dir / "alpha.json").read_text()


def test_a_run_directory_is_never_reused(tmp_path):
    """A second run into the same directory stops before doing anything."""
    run_in(tmp_path, "method=lora")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_in(tmp_path, "method=lora")


def test_ranks_file_naming_other_modules_is_refused(tmp_path):
    """A ranks file for another model stops the run, naming the offending keys."""
    bad = tmp_path / "ranks.json"
    bad.write_text(json.dumps({"ranks": {"transformer.h.0.attn.c_attn:q": 2}}))
    with pytest.raises(ValueError, match="not in the model"):
        run_in(tmp_path, f"search.ranks_file={bad}")


@pytest.mark.slow  # the real console script in subprocesses: 9 s (the same errors in-process: test_reliability)
def test_console_script_errors_are_one_line_with_status_2(tmp_path):
    """Bad input through the console script: exit 2, one 'error:' line, no traceback."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "autolora", *TINY, "search.k=0", f"hydra.run.dir={tmp_path / 'x'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "error: search.k must be >= 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_directory(tmp_path, glue_root):
    """`-m task=glue/rte,glue/mrpc seed=0,1`: four jobs, four run directories named by number and overrides
    (data.data_dir left out), four metrics.json."""
    result = subprocess.run(
        [sys.executable, "-m", "autolora", "-m", *TINY, "task=glue/rte,glue/mrpc", "seed=0,1",
         f"data.data_dir={glue_root}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    found = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    combos = {p.parent.name: (json.loads(p.read_text())["task"], json.loads(p.read_text())["seed"]) for p in found}
    assert set(combos.values()) == {("glue/rte", 0), ("glue/rte", 1), ("glue/mrpc", 0), ("glue/mrpc", 1)}
    assert sorted(name.split("_", 1)[0] for name in combos) == ["0", "1", "2", "3"]
    assert all(name.split("_", 1)[1] == f"debug=tiny,seed={seed},task={task.replace('/', '-')}"
               for name, (task, seed) in combos.items())


@pytest.mark.slow
def test_submitit_local_launcher_sweeps_two_jobs_in_parallel(tmp_path):
    """hydra/launcher=local (Hydra's submitit plugin): two sweep points as two local jobs, both finished."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "autolora", "-m", "hydra/launcher=local",
                           "experiment=smoke_sst2_tiny", "seed=0,1", "logger=none", "progress=false",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/metrics.json"))
    assert seeds == [0, 1]
    assert any((sweep / ".submitit").iterdir())  # the jobs really went through submitit


def test_adalora_prunes_to_its_budget_at_its_own_learning_rate(tmp_path):
    """method=adalora: peft's allocator leaves at most init_r per matrix and target_r on average, the
    adapter is saved in peft format, and it trains at retrain.lr x adalora.lr_scale."""
    record, run_dir = run_in(tmp_path, "method=adalora", "adalora.init_r=6", "adalora.target_r=2",
                             "adalora.lr_scale=3.0", "retrain.lr=1e-3", "retrain.warmup_ratio=0.0", "log_every=1")
    ranks = record["ranks"]
    assert len(ranks) == 4 and max(ranks.values()) <= 6 and sum(ranks.values()) <= 2 * len(ranks)
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and "search" not in record
    first = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    steps = record["retrain"]["steps"]
    assert first["lr"] == pytest.approx(3e-3 * (steps - 1) / steps)  # linear decay from 1e-3 x 3, no warmup


@pytest.mark.parametrize("method", ["autolora", "adalora"])
def test_bf16_run_trains_on_bf16_frozen_weights_and_exports_fp32(tmp_path, method):
    """precision=bf16 keeps frozen matmul weights in bf16 while training (Job.ready_to_train); what is saved
    is fp32: the adapter and, for this random-init model, the base weights beside it."""
    from safetensors.torch import load_file

    record, run_dir = run_in(tmp_path, "precision=bf16", f"method={method}")
    assert 0 <= record["retrain"]["dev"]["accuracy"] <= 1
    tensors = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert tensors and {t.dtype for t in tensors.values()} == {torch.float32}
    if method == "autolora":  # AdaLoRA saves its adapter only
        base = load_file(run_dir / "base_model" / "model.safetensors")
        assert {t.dtype for t in base.values()} == {torch.float32}
