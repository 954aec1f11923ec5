"""Atomic file writes (a temporary file in the same folder, then a rename) and checked reads of users' files.

A reader (or a resumed run) never sees half a file, even after SIGKILL. JSON is strict: a NaN or an infinity
is written as null, so every file parses with any JSON reader. A full disk or a read-only folder becomes an
OutputError naming the file, never a traceback.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any


class OutputError(OSError):
    """The file system refused an output (full disk, quota, read-only folder); the message names the file."""

    def __init__(self, code: int | None, message: str):
        super().__init__(message)
        self.errno = code


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def output_error(path: Path, err: Exception) -> OutputError:
    """One line for a failed write: what happened to which file, and that earlier files are whole. `err` is an
    OSError or a library's own error that carries the OS error in its text (safetensors: "os error 28")."""
    if not isinstance(err, OSError):
        code = re.search(r"os error (\d+)", str(err))
        err = OSError(int(code.group(1)) if code else None, str(err))
    if err.errno in NO_SPACE:  # the atomic rename never happened: the previous version of the file is intact
        why = "no space left on the device (or the quota is used up)"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "the folder is read-only or not writable"
    else:
        why = err.strerror or str(err)
    return OutputError(err.errno, f"cannot write {path}: {why}; the files written before it are whole")


def write_atomic(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call write(f) on a temporary file next to path, fsync it, then rename it over path."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OutputError) or err.errno is None:
            raise
        raise output_error(path, err) from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def finite(payload: Any) -> Any:
    """The payload with every NaN or infinity replaced by None (strict JSON has no NaN)."""
    if isinstance(payload, float) and not math.isfinite(payload):
        return None
    if isinstance(payload, dict):
        return {key: finite(value) for key, value in payload.items()}
    if isinstance(payload, list | tuple):
        return [finite(value) for value in payload]
    return payload


def strict_json(text: str) -> Any:
    """json.loads without NaN and Infinity (write_json never writes them: a file holding one was written or
    edited by someone else, and a NaN score would average into every mean as nan); ValueError names the line."""

    def refuse(name: str) -> Any:
        found = re.search(rf"(?<![\w\"]){re.escape(name)}(?![\w\"])", text)
        where = f"line {text.count(chr(10), 0, found.start()) + 1}: " if found else ""
        raise ValueError(f"{where}{name} is not a number strict JSON allows")

    try:
        return json.loads(text, parse_constant=refuse)
    except RecursionError:  # json recurses once per nesting level
        raise ValueError("nested too deeply") from None


def write_json(path: str | Path, payload: Any) -> Path:
    """Pretty, strict JSON (NaN and infinities as null), atomically."""
    text = json.dumps(finite(payload), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_atomic(path, lambda f: f.write(text))


def write_text(path: str | Path, text: str) -> Path:
    """Plain text, atomically."""
    return write_atomic(path, lambda f: f.write(text))


def _open_checked(path: Path, error: type[Exception]) -> IO[bytes]:
    """The user's file opened for reading; a missing, folder or unreadable path raises `error` in one line."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise error(f"{path}: not readable (permission denied)") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None


def _check_head(path: Path, head: bytes, error: type[Exception]) -> None:
    if not head:
        raise error(f"{path}: empty file (0 bytes)")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head[:4096]:
        raise error(f"{path}: UTF-16 or binary, not UTF-8 text; convert it (e.g. iconv -f UTF-16 -t UTF-8)")


def _decode(path: Path, error: type[Exception], chunk: int, keep: bool) -> str | None:
    """Decode the file as UTF-8 block by block (a BOM is dropped), counting lines so that a bad byte is named
    with its line; the text if `keep`, else None (a check that does not hold the file)."""
    decoder, lines, parts = codecs.getincrementaldecoder("utf-8-sig")(), 1, []
    with _open_checked(path, error) as handle:
        try:
            block = handle.read(chunk)
            _check_head(path, block, error)
            while True:
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as err:
                    # err.object ends with this block; before it, the bytes of a character left unfinished at the
                    # end of the last block (after all of its newlines)
                    line = lines + block.count(b"\n", 0, max(err.start - len(err.object) + len(block), 0))
                    raise error(f"{path}:{line}: not UTF-8 (byte "
                                f"0x{err.object[err.start]:02x}); convert the file to UTF-8 "
                                "(e.g. iconv -f LATIN1 -t UTF-8)") from None
                if keep:
                    parts.append(text)
                if not block:
                    return "".join(parts) if keep else None
                lines += block.count(b"\n")
                block = handle.read(chunk)
        except OSError as err:
            raise error(f"{path}: cannot be read ({err.strerror or err})") from None


def read_text(path: str | Path, error: type[Exception] = ValueError) -> str:
    """The text of a user's file as UTF-8 (a BOM is dropped); a missing, unreadable, empty, binary, UTF-16 or
    otherwise non-UTF-8 file raises `error` with one line naming the file (and the line of a bad byte)."""
    return _decode(Path(path), error, 1 << 20, keep=True)


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """A JSON file, read as read_text does and parsed by strict_json; `error` names the file (and the line)."""
    text = read_text(path, error)
    try:
        return strict_json(text)
    except ValueError as err:  # JSONDecodeError is one; its message names the line and column
        raise error(f"{path}: not valid JSON ({err})") from None


def check_text(path: str | Path, error: type[Exception] = ValueError, chunk: int = 1 << 20) -> None:
    """read_text's checks without holding the file: for a large table that another library will parse."""
    _decode(Path(path), error, chunk, keep=False)


def owned_names(folder: Path, manifest: str, error: type[Exception]) -> set[str]:
    """The names listed in folder/manifest (paths relative to folder, one a line): the files this program wrote."""
    path = folder / manifest
    if not os.path.lexists(path):
        return set()
    if path.is_symlink() or not path.is_file():
        raise error(f"{path}: not a plain file; move it away (it lists the files this program wrote there)")
    text = _decode(path, error, 1 << 20, keep=True) if path.stat().st_size else ""
    return {line for line in text.splitlines() if line.strip()}


def write_owned(folder: Path, outputs: Mapping[str, str | bytes], manifest: str,
                error: type[Exception]) -> list[Path]:
    """Write `outputs` (path relative to `folder` -> text or bytes) atomically, but only over files this program
    wrote: those listed in folder/manifest. A name that exists (a file, a folder or a link) and is not listed is
    refused with `error` before anything is written. The list grows before the files are written, so output
    cut off midway is still this program's to replace."""
    folder = Path(folder)
    for parent in sorted({(folder / name).parent for name in outputs}):
        if os.path.lexists(parent) and not parent.is_dir():
            raise error(f"{parent} is a file, not a folder; move it away or write elsewhere")
    ours = owned_names(folder, manifest, error)
    foreign = [name for name in outputs if os.path.lexists(folder / name) and name not in ours]
    if foreign:
        raise error(f"{folder / foreign[0]} exists and was not written by this program (not listed in "
                    f"{folder / manifest}); move it away or write elsewhere")
    write_text(folder / manifest, "".join(f"{name}\n" for name in sorted(ours | set(outputs))))
    return [write_atomic(folder / name, lambda f, data=data: f.write(data), binary=isinstance(data, bytes))
            for name, data in outputs.items()]


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (data files, model weights, bundle parts)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
