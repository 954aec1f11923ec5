"""models.runtime.cache_position_bias: MPNet before transformers 5.18 copied its position buckets from the CPU to
the GPU in every forward pass (the traceback of the 2026-12-07 H100 smoke run), which a CUDA graph cannot
capture; with the bias kept per length, compile=auto captures MPNet as it does any encoder (the captured run
itself: tests/test_gpu.py)."""

from __future__ import annotations

import dataclasses

import torch
from conftest import compose

from autolora.engine.distributed import SINGLE
from autolora.models import backbone
from autolora.runner.job import compile_modes
from autolora.runner.run_config import build_settings

MPNET = dict(model_type="mpnet", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64)


def test_auto_captures_mpnet_on_a_cuda_device_with_transformers_5_17(monkeypatch):
    """A tiny random MPNet resolved as the runner resolves it, with transformers reporting 5.17.0 (where it used
    to step eagerly), on a (pretended) CUDA device: resolve_compile reads only the device's type, nothing
    touches a GPU."""
    monkeypatch.setattr(backbone.transformers, "__version__", "5.17.0")
    base = build_settings(compose("debug=tiny"))
    model = dataclasses.replace(base.model, name="tiny-mpnet", config=MPNET, targets=dataclasses.replace(
        base.model.targets, modules=("q", "v"), split=(), parts=()), attn_implementation="eager")
    settings = dataclasses.replace(base, device=torch.device("cuda"),
                                   model=backbone.resolve_auto(model, "sequence_classification"))
    assert compile_modes(settings, SINGLE) == {"search": "graphs", "retrain": "graphs"}


def test_a_run_builds_mpnet_with_the_cached_position_bias():
    """Job.fresh_model, the one place a run's models are built, wraps the encoder."""
    from types import SimpleNamespace

    from autolora.models.backbone import load_tokenizer
    from autolora.models.runtime import _PositionBiasCache
    from autolora.runner.job import Job

    settings = build_settings(compose("debug=tiny", "model.name=tiny-mpnet", "model.config.model_type=mpnet",
                                      "model.targets.modules=[q,v]"))
    job = SimpleNamespace(settings=settings, task=SimpleNamespace(head="sequence_classification", num_labels=2),
                          tokenizer=load_tokenizer(settings.model), heads=("classifier",))
    encoder = Job.fresh_model(job).mpnet.encoder
    assert isinstance(encoder.compute_position_bias, _PositionBiasCache)


def tiny_mpnet():
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.for_model(**MPNET, attn_implementation="eager")
    return AutoModelForSequenceClassification.from_config(config).eval().requires_grad_(False)


def test_the_cached_position_bias_is_the_originals_and_is_computed_once_per_length(monkeypatch):
    """models.runtime.cache_position_bias: the same logits bit for bit, the buckets built once per length (the
    host-to-device copy that capture refuses happens in the first, eager step of a shape only), and rebuilt
    where what was kept could be stale: a table written to, a table that trains, inference mode."""
    from transformers.models.mpnet import modeling_mpnet

    from autolora.models.runtime import cache_position_bias

    plain, cached = tiny_mpnet(), tiny_mpnet()
    assert cache_position_bias(cached) == 1 and cache_position_bias(torch.nn.Linear(2, 2)) == 0
    built = []
    original = modeling_mpnet.MPNetEncoder.relative_position_bucket
    monkeypatch.setattr(modeling_mpnet.MPNetEncoder, "relative_position_bucket",
                        staticmethod(lambda *a, **k: built.append(1) or original(*a, **k)))
    ids = {n: torch.randint(0, 100, (3, n)) for n in (8, 16)}
    for n in (8, 16, 8, 16):
        torch.testing.assert_close(cached(input_ids=ids[n]).logits, plain(input_ids=ids[n]).logits, rtol=0, atol=0)
    assert len(built) == 4 + 2  # the plain model every call, the cached one once per length
    table = cached.mpnet.encoder.relative_attention_bias.weight
    with torch.no_grad():
        table.add_(1.0)  # its version moves: the kept bias is stale
        plain.mpnet.encoder.relative_attention_bias.weight.add_(1.0)
    built.clear()
    torch.testing.assert_close(cached(input_ids=ids[8]).logits, plain(input_ids=ids[8]).logits, rtol=0, atol=0)
    assert len(built) == 2
    for case in ("trains", "inference"):
        built.clear()
        table.requires_grad_(case == "trains")
        with torch.inference_mode(case == "inference"):
            cached(input_ids=ids[8]), cached(input_ids=ids[8])
        assert len(built) == 2, case  # the original ran each time
    table.requires_grad_(False)
