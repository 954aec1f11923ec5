"""Atomic file writes: a temporary file in the same folder, then a rename.

A reader (or a resumed run) never sees half a file, even after SIGKILL.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call write(f) on a temporary file next to path, fsync it, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Pretty JSON, atomically."""
    return write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2, sort_keys=False) + "\n"))


def write_text(path: str | Path, text: str) -> Path:
    """Plain text, atomically."""
    return write_atomic(path, lambda f: f.write(text))
