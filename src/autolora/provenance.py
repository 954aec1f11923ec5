"""What every result records about where it came from: the commit, the library versions, the device."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

COMMIT_STAMP = "COMMIT"  # in an installed wheel: the commit it was built from (bundle.wheels.build_autolora)


def git_commit() -> str:
    """Installed from a bundle's wheel, the commit stamped into it (first: a venv inside some other git checkout
    would otherwise answer with that checkout's commit); else the checkout's commit (with -dirty for local
    changes); else 'unknown'."""
    here = Path(__file__).resolve().parent
    if (here / COMMIT_STAMP).is_file():
        return (here / COMMIT_STAMP).read_text().strip()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    """The versions of Python and the libraries that change numbers."""
    import datasets
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "datasets": datasets.__version__}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's kind and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
