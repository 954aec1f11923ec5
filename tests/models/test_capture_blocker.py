"""models.backbone.capture_blocker: an architecture whose forward copies a CPU tensor to the GPU cannot be a CUDA
graph (MPNet before transformers 5.18: the traceback of the 2026-12-07 H100 smoke run). compile=auto then steps
eagerly and says why; an explicit compile=graphs is one line before anything loads."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import compose

from autolora.engine.distributed import SINGLE
from autolora.errors import ConfigError
from autolora.models import backbone
from autolora.runner.job import compile_choices, compile_modes
from autolora.runner.run_config import build_settings

MPNET = dict(model_type="mpnet", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64)


def test_mpnet_blocks_capture_before_5_18_only():
    assert "copies a CPU tensor to the GPU" in backbone.capture_blocker("mpnet", "5.17.0")
    assert backbone.capture_blocker("mpnet", "5.18.0") is None
    assert backbone.capture_blocker("bert", "5.17.0") is None


def cuda_settings(monkeypatch, installed: str, *overrides: str):
    """A tiny random MPNet resolved as the runner resolves it, with transformers reporting `installed`, on a
    (pretended) CUDA device: resolve_compile reads only the device's type, nothing touches a GPU."""
    monkeypatch.setattr(backbone.transformers, "__version__", installed)
    base = build_settings(compose("debug=tiny", *overrides))
    model = dataclasses.replace(base.model, name="tiny-mpnet", config=MPNET, targets=dataclasses.replace(
        base.model.targets, modules=("q", "v"), split=(), parts=()), attn_implementation="eager")
    model = backbone.resolve_auto(model, "sequence_classification")
    return dataclasses.replace(base, device=torch.device("cuda"), model=model)


def test_auto_steps_mpnet_eagerly_with_the_reason_on_old_transformers(monkeypatch):
    settings = cuda_settings(monkeypatch, "5.17.0")
    choices = compile_choices(settings, SINGLE, type("T", (), {"max_length": 32}), 64)
    assert {phase: c.mode for phase, c in choices.items()} == {"search": "off", "retrain": "off"}
    assert "transformers 5.17.0's mpnet copies a CPU tensor" in choices["retrain"].reason


def test_auto_captures_mpnet_where_transformers_builds_the_buckets_on_the_gpu(monkeypatch):
    settings = cuda_settings(monkeypatch, "5.18.0")
    assert settings.model.capture_blocker is None
    assert compile_modes(settings, SINGLE) == {"search": "graphs", "retrain": "graphs"}


def test_explicit_graphs_on_old_transformers_is_one_line(monkeypatch):
    settings = dataclasses.replace(cuda_settings(monkeypatch, "5.17.0"), compile="graphs")
    with pytest.raises(ConfigError, match=r"^compile=graphs cannot run here: transformers 5\.17\.0's mpnet .*; use "
                                          r"compile=auto or compile=off$"):
        compile_modes(settings, SINGLE)
