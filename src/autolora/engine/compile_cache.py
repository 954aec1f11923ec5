"""Where inductor and triton keep what they compiled, so that a sweep pays each shape's compilation once.

torch.compile's on-disk caches (FX graphs, inductor kernels, autotuning) default to a folder under /tmp named
after the user, and triton's kernels to ~/.triton/cache; a sweep's runs (separate processes, maybe separate
nodes with their own /tmp) then compile the same shapes again. `compile_cache` (config) names one folder that
all runs of a sweep share: inductor's cache is FOLDER/inductor, triton's FOLDER/triton. Both libraries read
their environment variable when they first compile, so `use` must run before anything is compiled.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path

VARIABLES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}
MARKER = "AUTOLORA_COMPILE_CACHE_SET"  # JSON: variable -> [the value use() wrote, the user's value before it]


def default_folder(environ: MutableMapping[str, str]) -> Path:
    """$AUTOLORA_CACHE/compile, else $XDG_CACHE_HOME/autolora/compile, else ~/.cache/autolora/compile (the
    cache models.assembled uses too)."""
    if environ.get("AUTOLORA_CACHE"):
        return Path(environ["AUTOLORA_CACHE"]).expanduser() / "compile"
    base = Path(environ["XDG_CACHE_HOME"]).expanduser() if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "autolora" / "compile"


def use(folder: str | None, environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Point the caches at `folder` (None: default_folder, where the user has not set the variables
    themselves); returns the variable -> folder in effect. Creates nothing: the libraries do on first write.

    Sweep points that run one after the other in one process share its environment: what an earlier point set
    is told from what the user set by MARKER (ours and the user's value per variable), so a later point with
    compile_cache=null gets the user's own folder or the default, not the earlier point's."""
    previous = json.loads(environ.get(MARKER, "{}"))
    chosen, written = {}, {}
    for variable, sub in VARIABLES.items():
        current = environ.get(variable)
        ours, users = previous.get(variable, (None, None))
        users = users if current is not None and current == ours else current
        if folder is None and users:
            chosen[variable] = environ[variable] = users  # the user's own choice stands
            continue
        root = Path(folder).expanduser().absolute() if folder is not None else default_folder(environ)
        chosen[variable] = environ[variable] = str(root / sub)
        written[variable] = (chosen[variable], users)
    if written:
        environ[MARKER] = json.dumps(written)
    else:
        environ.pop(MARKER, None)
    return chosen
