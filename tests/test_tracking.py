"""events.jsonl always; W&B offline files when logger=wandb."""

from __future__ import annotations

import json

from autolora.tracking import LoggerConfig, open_tracker


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
