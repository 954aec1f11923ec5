"""A staged folder cut into part folders below a size limit, with the manifest that joins and checks them.

Each part folder (OUT/part-001, ...) holds whole files and chunks of the others (FILE.000, FILE.001, ...)
under the same relative paths, and stays below `limit` bytes in all: a part fits one transfer that is capped
(a device call's carry, an upload form). OUT/files.tsv lists, per file, its sha256, size, path and its chunks
in order (install.sh reads it with bash alone); OUT/SHA256SUMS is the same in `sha256sum -c` form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from autolora.files import sha256_file

SAFE_NAME = re.compile(r"^[\w.@+=-]+$")  # no spaces or shell-special characters: install.sh splits on whitespace


@dataclass(frozen=True)
class Entry:
    """One file of the bundle: its path (relative to the joined tree), sha256, size and chunk paths."""

    path: str
    sha256: str
    size: int
    chunks: tuple[str, ...]  # relative to OUT: part-NNN/<path> or part-NNN/<path>.KKK


def split(staged: Path, out: Path, limit: int) -> list[Entry]:
    """Cut every file under `staged` into part folders of at most `limit` bytes each: files in sorted order,
    each part filled before the next begins (a file that does not fit goes on in the next part); returns the
    manifest entries."""
    if limit < 1:
        raise ValueError(f"the part size must be positive, got {limit} bytes")
    entries, part, used = [], 1, 0
    for path in sorted(p for p in staged.rglob("*") if p.is_file()):
        relative = path.relative_to(staged).as_posix()
        bad = [piece for piece in relative.split("/") if not SAFE_NAME.match(piece)]
        if bad:
            raise ValueError(f"{relative}: the name {bad[0]!r} has characters install.sh cannot carry; rename it")
        size, pieces = path.stat().st_size, []
        with open(path, "rb") as handle:
            left = size
            while True:
                if used == limit:
                    part, used = part + 1, 0
                data = handle.read(min(limit - used, left))  # fill the part, then the next
                pieces.append((part, data))
                used, left = used + len(data), left - len(data)
                if left == 0:
                    break
        chunks = []
        for index, (number, data) in enumerate(pieces):
            name = relative if len(pieces) == 1 else f"{relative}.{index:03d}"
            target = out / f"part-{number:03d}" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            chunks.append(f"part-{number:03d}/{name}")
        entries.append(Entry(relative, sha256_file(path), size, tuple(chunks)))
    return entries


def write_manifest(out: Path, entries: list[Entry]) -> None:
    """OUT/files.tsv (sha256, size, path, chunks) and OUT/SHA256SUMS (for `sha256sum -c` in the joined tree)."""
    (out / "files.tsv").write_text("".join(f"{e.sha256}\t{e.size}\t{e.path}\t{' '.join(e.chunks)}\n"
                                           for e in entries))
    (out / "SHA256SUMS").write_text("".join(f"{e.sha256}  {e.path}\n" for e in entries))


def join(out: Path, dest: Path) -> list[str]:
    """The files of the bundle in OUT, joined into `dest` and checked; returns the paths whose sha256 differs
    (install.sh does the same with bash; this is its Python twin, for tests and machines without bash)."""
    bad = []
    for line in (out / "files.tsv").read_text().splitlines():
        digest, _, path, chunks = line.split("\t")
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as handle:
            for chunk in chunks.split():
                handle.write((out / chunk).read_bytes())
        if sha256_file(target) != digest:
            bad.append(path)
    return bad
