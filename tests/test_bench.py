"""make bench's parts on CPU (timings come from the GPU only): every variant's step runs, sizes parse."""

from __future__ import annotations

import argparse
import functools

import pytest
import torch

from autolora import bench


@pytest.mark.parametrize("which", list(bench.PASSES))
def test_every_variant_steps_on_the_minilm_shape(which):
    cpu = torch.device("cpu")
    train, val = bench.train_val("minilm", 2, 8, cpu)
    # bf16 autocast as on the GPU: the project's variants keep frozen weights in bf16, which needs it
    step = bench.variant("minilm", which, train, val, functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16), cpu)
    step()
    step()


def test_sizes_parse_and_bad_ones_are_refused():
    assert bench.size("16x32") == (16, 32) and bench.size("32X256") == (32, 256)
    with pytest.raises(argparse.ArgumentTypeError, match="BATCHxLENGTH"):
        bench.size("16by32")


def test_pass_flops_grow_with_the_model():
    flops = [bench.flops_per_pass(name, 16, 128) for name in ("minilm", "roberta-base", "gpt2-medium")]
    assert flops == sorted(flops) and flops[0] > 0
