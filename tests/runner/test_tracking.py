"""events.jsonl always; W&B offline files when logger=wandb."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from autolora.runner.tracking import LoggerConfig, open_tracker


def test_events_file_without_wandb(tmp_path):
    """logger=none still writes one JSON line per logged step."""
    tracker = open_tracker(LoggerConfig("none", None, "auto"), tmp_path, {}, "t")
    tracker.log({"phase": "search", "train_loss": 0.5}, 3)
    tracker.close()
    assert json.loads((tmp_path / "events.jsonl").read_text()) == {"step": 3, "phase": "search", "train_loss": 0.5}
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_writes_its_run_into_the_run_directory(tmp_path, monkeypatch):
    """logger=wandb with no API key: an offline W&B run inside the run directory, no network needed."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = open_tracker(LoggerConfig("wandb", "autolora-test", "auto"), tmp_path, {"seed": 1}, "t")
    tracker.log({"phase": "retrain", "train_loss": 0.25}, 1)
    tracker.summary({"retrain/dev_accuracy": 0.9}, {"m.q": 2})
    tracker.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


@pytest.mark.slow
def test_wandb_output_log_holds_no_library_noise(tmp_path, model_folders):
    """A console run with W&B offline on a pretrained folder: W&B's copy of the output (output.log) holds no
    load report, weight-loading bar or warning, and the summary names the offline run and its sync command."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "TQDM_DISABLE")}
    own = REPO / "tests" / "fixtures" / "own"
    done = subprocess.run(
        [sys.executable, "-m", "autolora", "task=text_classification", f"data.data_dir={own}",
         "task.train_file=reviews.csv", "task.text_columns=[review]", "task.label_column=sentiment",
         f"model.path={model_folders['my-bert']}", "logger=wandb", "device=cpu", "search.epochs=1", "retrain.epochs=1",
         "search.batch_size=4", "search.warmup_ratio=0.0",  # several search steps: the gates move
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [log] = (tmp_path / "run" / "wandb").glob("offline-run-*/files/output.log")
    for noise in ("LOAD REPORT", "Loading weights", "Warning", "MISSING"):
        assert noise not in log.read_text() and noise not in done.stdout + done.stderr, noise
    assert f"wandb sync {log.parents[1]}" in done.stdout


def test_quiet_mode_hides_matplotlibs_font_cache_message():
    """A first run on a machine logs matplotlib's 'generated new fontManager' at INFO, which Hydra's console
    handler printed above the summary; quiet mode keeps matplotlib to warnings, verbose=true lets it through."""
    import logging

    from autolora.runner.quiet import silence_libraries

    font_manager = logging.getLogger("matplotlib.font_manager")
    root_level = logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.INFO)  # what Hydra's job logging sets
        silence_libraries(verbose=False)
        assert not font_manager.isEnabledFor(logging.INFO) and font_manager.isEnabledFor(logging.WARNING)
        silence_libraries(verbose=True)
        assert font_manager.isEnabledFor(logging.INFO)
    finally:
        silence_libraries(verbose=False)
        logging.getLogger().setLevel(root_level)
