"""The wheels a bundle carries: the packages the target image lacks, for the target's Python, plus autolora.

Each package is pinned to the version installed here (the versions the tests ran with), and found, in order:
1. in the folders given with --wheels-from and pip's own wheel cache (wheels pip built here before, such as
   antlr4-python3-runtime's), pure-Python wheels only (any Python 3 runs them);
2. with `pip download --no-deps --only-binary=:all: --python-version X` (wheels for the target's Python);
3. as its sdist (`pip download --no-binary`), built here with `pip wheel`; the result must be pure Python.
autolora itself is built from this checkout (`pip wheel --no-deps`), stamped with its commit.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from autolora.errors import ConfigError
from autolora.provenance import COMMIT_STAMP, git_commit

# What the project's GPU image lacks (read from its package list: torch, transformers, accelerate are there), and
# what runs need of it: the config stack, datasets (+ dill, multiprocess), seqeval, peft, the parallel launcher's
# cloudpickle.
DEFAULT_PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "dill", "multiprocess",
                    "seqeval", "peft", "cloudpickle")
PURE_TAGS = re.compile(r"^(py3|py2\.py3|py3\d+|cp3\d+)-none-any$")


def normalise(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 427/503: runs of -_. become _ , lower case)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned(name: str) -> str:
    """name==the version installed here, or the bare name where it is not installed."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def local_wheel(requirement: str, folders: Sequence[Path], python: str) -> Path | None:
    """A pure wheel of `requirement` (name or name==version) for the target Python in `folders`, if any."""
    name, _, version = requirement.partition("==")
    wanted = normalise(name)
    for folder in folders:
        for wheel in sorted(Path(folder).rglob("*.whl")):
            parts = wheel.stem.split("-")
            if len(parts) < 5 or normalise(parts[0]) != wanted or (version and parts[1] != version):
                continue
            tag = "-".join(parts[-3:])
            if PURE_TAGS.match(tag) and tag.split("-")[0] in ("py3", "py2.py3", f"py{python.replace('.', '')}",
                                                                f"cp{python.replace('.', '')}"):
                return wheel
    return None


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def pip_cache() -> Path | None:
    """pip's wheel cache folder here (None when pip has none)."""
    done = pip("cache", "dir")
    folder = Path(done.stdout.strip()) / "wheels" if done.returncode == 0 else None
    return folder if folder is not None and folder.is_dir() else None


def fetch(requirement: str, out: Path, python: str, folders: Sequence[Path]) -> tuple[Path, str]:
    """One wheel of `requirement` for Python `python` into `out`; returns it and where it came from."""
    found = local_wheel(requirement, folders, python)
    if found is not None:
        target = out / found.name
        target.write_bytes(found.read_bytes())
        return target, f"local ({found.parent})"
    with tempfile.TemporaryDirectory() as tmp:
        done = pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python,
                   "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                   "-d", tmp, requirement)
        if done.returncode == 0:
            wheel = next(Path(tmp).glob("*.whl"))
            return _keep(wheel, out), "pip download (wheel)"
        done = pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", tmp, requirement)
        if done.returncode != 0:
            raise ConfigError(f"bundle: no wheel or sdist of {requirement} for Python {python}: "
                              f"{(done.stderr.strip().splitlines() or ['pip failed'])[-1]}")
        sdist = next(p for p in Path(tmp).iterdir() if p.is_file())
        built = Path(tmp) / "built"
        done = pip("wheel", "-q", "--no-deps", "-w", str(built), str(sdist))
        if done.returncode != 0:
            raise ConfigError(f"bundle: {sdist.name} does not build: {(done.stderr.strip().splitlines() or [''])[-1]}")
        wheel = next(built.glob("*.whl"))
        if not PURE_TAGS.match("-".join(wheel.stem.split("-")[-3:])):
            raise ConfigError(f"bundle: {sdist.name} builds a platform wheel ({wheel.name}): build it on the target")
        return _keep(wheel, out), "sdist, built here"


def _keep(wheel: Path, out: Path) -> Path:
    target = out / wheel.name
    target.write_bytes(wheel.read_bytes())
    return target


def build_autolora(checkout: Path, out: Path) -> Path:
    """autolora's own wheel from the checkout (conf/ and the packaged data inside it), stamped with the
    checkout's commit: installed, it has no git to ask, and every run records the commit it ran."""
    if not (checkout / "pyproject.toml").is_file():
        raise ConfigError(f"bundle: {checkout} is not an autolora checkout (no pyproject.toml): run it from one")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(checkout / name, source / name)
        for name in ("src", "conf"):
            shutil.copytree(checkout / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (source / "src" / "autolora" / COMMIT_STAMP).write_text(git_commit() + "\n")
        done = pip("wheel", "-q", "--no-deps", "-w", tmp, str(source))
        if done.returncode != 0:
            raise ConfigError(f"bundle: autolora's wheel does not build: {done.stderr.strip()[-300:]}")
        return _keep(next(Path(tmp).glob("autolora-*.whl")), out)
