"""runner.quiet: a quiet run's console (stdout and stderr, in the order a terminal shows them) ends with the
summary; the library bars it hides (the base weights' "Writing model shards" of a random-init model's save)
show with verbose=true, so the capture below would see them."""

from __future__ import annotations

import subprocess
import sys

import pytest
from harness import TINY, env


def console(tmp_path, *overrides: str) -> str:
    """Everything a fresh `python -m autolora` prints, stdout and stderr through one pipe (their real order).
    TQDM_DISABLE (set for the test session by conftest) is dropped: the run alone decides what shows."""
    child = {k: v for k, v in env().items() if k != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, "-m", "autolora", *TINY, "progress=true", *overrides], cwd=tmp_path,
                          env=child, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout
    return done.stdout


@pytest.mark.slow  # fresh processes (the real console): 20 s each
@pytest.mark.parametrize("method", ["autolora", "lora"])
def test_quiet_console_ends_with_the_summary(tmp_path, method):
    """Nothing reaches the console after the summary's last line (run dir ...), and no library bar at all:
    the adapter and the random-init base weights are saved before the summary, quietly."""
    out = console(tmp_path, f"method={method}")
    lines = [line for line in out.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("run dir  "), out[-2000:]
    assert any(line.startswith("autolora-run  ") for line in lines)
    assert "Writing model shards" not in out and "Loading weights" not in out, out


@pytest.mark.slow
def test_verbose_console_shows_the_save_bar_quiet_mode_hides(tmp_path):
    """verbose=true: the base weights' "Writing model shards" bar reaches the same capture."""
    assert "Writing model shards" in console(tmp_path, "method=lora", "verbose=true")

