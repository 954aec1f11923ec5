"""make bench's parts on CPU (timings come from the GPU only): every eager variant's step runs, shapes parse."""

from __future__ import annotations

import argparse
import functools

import pytest
import torch

from autolora.bench import steps as bench


@pytest.mark.parametrize("which", ["peft_lora", *bench.OURS])
def test_every_eager_variant_steps_on_the_minilm_shape(which):
    """Each timed step (peft's and ours, eager) runs twice on a tiny MiniLM-shaped batch and trains something."""
    cpu = torch.device("cpu")
    train, val = bench.train_val("minilm", 2, 8, cpu)
    # bf16 autocast as on the GPU: the project's variants keep frozen weights in bf16, which needs it
    timed = bench.variant("minilm", which, "eager", train, val,
                          functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16), cpu)
    with timed.stream():
        timed.step()
        timed.step()
    assert timed.captured is None


def test_shapes_parse_and_bad_ones_are_refused():
    """--shapes takes MODEL@BATCHxLENGTH and names what is wrong otherwise."""
    assert bench.parse_shape("minilm@16x32") == ("minilm", 16, 32)
    assert bench.parse_shape("gpt2-medium@32X256") == ("gpt2-medium", 32, 256)
    with pytest.raises(argparse.ArgumentTypeError, match="BATCHxLENGTH"):
        bench.parse_shape("minilm@16by32")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown model"):
        bench.parse_shape("bert@16x32")


def test_pass_flops_grow_with_the_model():
    """The analytic FLOPs behind MFU grow with model size."""
    flops = [bench.flops_per_pass(name, 16, 128) for name in ("minilm", "roberta-base", "gpt2-medium")]
    assert flops == sorted(flops) and flops[0] > 0
