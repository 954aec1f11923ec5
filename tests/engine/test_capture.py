"""What runs where: the compile modes per phase (the captured steps themselves are tested in test_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from autolora.engine import capture
from autolora.errors import ConfigError
from autolora.runner.run_config import build_settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_captures_only_where_capture_can_run():
    """auto -> graphs on one CUDA process; off on the CPU, under data parallelism or with a reason to stay eager."""
    assert capture.resolve_compile("auto", CUDA, distributed=False) == "graphs"
    assert capture.resolve_compile("auto", CPU, distributed=False) == "off"
    assert capture.resolve_compile("auto", CUDA, distributed=True) == "off"
    assert capture.resolve_compile("auto", CUDA, distributed=False, eager_only="exact hypergradient") == "off"
    assert capture.resolve_compile("inductor", CUDA, distributed=False) == "inductor"
    assert capture.resolve_compile("off", CPU, distributed=True) == "off"


@pytest.mark.parametrize("device, distributed, reason, message", [
    (CPU, False, None, "CUDA device"), (CUDA, True, None, "data-parallel"),
    (CUDA, False, "AdaLoRA's allocator", "AdaLoRA"),
])
def test_an_explicit_mode_that_cannot_run_is_refused_with_the_reason(device, distributed, reason, message):
    """compile=graphs where capture is impossible is an error naming why (never a silent fallback)."""
    with pytest.raises(ValueError, match=message):
        capture.resolve_compile("graphs", device, distributed=distributed, eager_only=reason)
    with pytest.raises(ValueError, match="compile must be one of"):
        capture.resolve_compile("cudagraphs", CUDA, distributed=False)


def test_settings_refuse_capture_on_the_cpu_before_anything_loads():
    """compile=graphs device=cpu and an unknown mode fail at the config check, naming the key."""
    with pytest.raises(ConfigError, match="compile=graphs captures CUDA graphs"):
        build_settings(compose("debug=tiny", "compile=graphs"))
    with pytest.raises(ConfigError, match="compile must be one of"):
        build_settings(compose("debug=tiny", "compile=fast"))
    assert build_settings(compose("debug=tiny")).compile == "auto"
