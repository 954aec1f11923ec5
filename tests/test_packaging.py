"""A plain (non-editable) install ships conf/ and the SST-2 sample: the console script runs anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_install_runs_from_another_directory(tmp_path):
    """Build the wheel, install it (no deps) into a fresh venv that borrows this venv's dependencies,
    then run autolora-run from an unrelated folder: --cfg job composes, debug=tiny runs end to end."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)], check=True)
    wheel = next(wheels.glob("autolora-*.whl"))
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True)
    python = fresh / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    fresh_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    (fresh_site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc., not autolora
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    script = fresh / "bin" / "autolora-run"
    located = subprocess.run([str(python), "-c", "import autolora; print(autolora.__file__)"], capture_output=True,
                             text=True, check=True, cwd=elsewhere, env=env).stdout
    assert str(fresh_site) in located  # the wheel's copy, not the checkout
    job = subprocess.run([str(script), "--cfg", "job"], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert job.returncode == 0, job.stderr
    assert "name: minilm" in job.stdout and "name: glue/sst2" in job.stdout
    result = subprocess.run([str(script), "debug=tiny", "hydra.run.dir=run"], capture_output=True, text=True,
                            cwd=elsewhere, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (elsewhere / "run" / "metrics.json").is_file() and (elsewhere / "run" / "adapter").is_dir()
    assert "packaged sample" in (elsewhere / "run" / "metrics.json").read_text()
