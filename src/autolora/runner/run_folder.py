"""The run folder a job writes: whether it may (new, resume, skip), the lock that makes it one run's, what a
resume continues.

Rules: a new run starts only in a new or empty folder, so it never reads, trusts or deletes what someone
else put there. A resume continues only a folder that this program marked as its own (MARKER), that is
unfinished, and whose config and data are those of the command. One process at a time holds a run folder
(LOCK, an flock: the kernel drops it when the process dies, so a killed run leaves no stale lock). `plan`
only reads, so a refused command leaves the folder as it was; `claim` writes, under the lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autolora.errors import ConfigError
from autolora.files import write_json, write_text
from autolora.layout import CONFIG, DISPLAY_KEYS, LOCK, MARKER
from autolora.layout import METRICS as FINISHED  # its presence means the run finished

NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock (some NFS/Lustre mounts)


@dataclass(frozen=True)
class Plan:
    """What a command may do with its folder: start a new run, resume the one there, or skip it (finished)."""

    action: str  # new | resume | skip
    path: Path


def check_writable(folder: Path) -> None:
    """The folder exists and is writable, or can be created: not a file, not inside a file, not read-only."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; choose another hydra.run.dir")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {existing} (read-only or not yours); choose another hydra.run.dir")


def contents(folder: Path, own: Collection[str] = ()) -> list[str]:
    """The names in the folder (none if it does not exist), leaving out the lock file (it says nothing about a
    run) and `own`: this job's log files, which Hydra's logging may have opened there before the run started."""
    try:
        return sorted(name for name in os.listdir(folder) if name != LOCK and name not in own)
    except FileNotFoundError:
        return []


def requeued(folder: Path) -> bool:
    """A SLURM job that submitit requeued (timeout, preemption) runs the same command in the same folder:
    it continues its own unfinished run there instead of refusing the folder."""
    return (os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and (folder / MARKER).is_file()
            and (folder / CONFIG).is_file() and not (folder / FINISHED).is_file())


def plan(folder: Path, resolved: Mapping[str, Any], resume: bool, sweep: bool = False,
         own: Collection[str] = ()) -> Plan:
    """What this command may do with `folder`; reads only. `sweep`: a point of a -m sweep, where resume=true
    also starts the points the killed sweep never reached and skips the finished ones. `own`: see contents."""
    folder = Path(folder)
    check_writable(folder)
    names = contents(folder, own)
    if not resume and not requeued(folder):
        if names:
            raise ConfigError(refusal(folder, names))
        return Plan("new", folder)
    if not names:
        if sweep:
            return Plan("new", folder)
        raise ConfigError(f"resume=true: {folder} holds no run to resume")
    if not (folder / MARKER).is_file():
        raise ConfigError(f"resume=true: {folder} is not a run of autolora-run (no {MARKER} file); "
                          "a copy made with `cp -r run/*` leaves it out: copy the folder itself")
    if (folder / FINISHED).is_file():
        if sweep:
            return Plan("skip", folder)
        raise ConfigError(f"{folder} holds a finished run ({FINISHED}): nothing to resume")
    if not (folder / CONFIG).is_file():  # killed between the marker and its config: nothing was done yet
        return Plan("new", folder)
    diffs = config_differences(saved_config(folder), resolved)
    if diffs:
        raise ConfigError(f"resume=true: the config differs from the run in {folder} at {diffs[:5]}")
    return Plan("resume", folder)


def refusal(folder: Path, names: list[str]) -> str:
    """Why a new run does not start in a folder that holds something, and what to do instead."""
    if MARKER in names:
        state = "a finished run" if FINISHED in names else "an unfinished run (continue it with resume=true)"
        return f"{folder} already holds {state}; a new run needs a new or empty folder (another hydra.run.dir)"
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return (f"{folder} is not empty ({shown}) and is not a run of autolora-run; a new run needs a new or empty "
            "folder (another hydra.run.dir)")


def saved_config(folder: Path) -> dict[str, Any]:
    """The resolved config a run saved in its folder."""
    path = folder / CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} cannot be read as a config ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a config (a YAML mapping)")
    return config


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += config_differences(a, b, f"{name}.")
        elif a != b and name not in DISPLAY_KEYS:
            diffs.append(name)
    return diffs


def newest_unfinished(parent: Path, resolved: Mapping[str, Any]) -> Path | None:
    """The newest unfinished run with this config among the folders in `parent` (resume=true without
    hydra.run.dir: the same command again); folders that are not runs, or hold garbage, are passed over."""
    candidates = []
    for marker in Path(parent).glob(f"*/{MARKER}"):
        folder = marker.parent
        if (folder / FINISHED).exists() or not (folder / CONFIG).is_file():
            continue
        try:
            same = not config_differences(saved_config(folder), resolved)
        except ConfigError:
            continue
        if same:
            candidates.append(folder)
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


class RunLock:
    """An exclusive flock on folder/.autolora-lock, held for the life of the run. The file names the holder
    (host, pid) for the message. Where the file system has no flock, a holder that is this host's and no
    longer alive is a stale lock and is taken over; another host's is trusted to be alive."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another run ({holder}); wait for it to end") from None
        except OSError as err:
            if err.errno not in NO_FLOCK:
                raise
            self._take_by_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()} since {dt.datetime.now():%Y-%m-%d %H:%M:%S}\n"
                  .encode(), 0)
        self.fd = fd
        return self

    def _open(self) -> int:
        """The lock file, opened without following a symbolic link and refused unless it is a plain file with one
        name: the lock is truncated and rewritten, so a link placed there would destroy the file it points to."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ConfigError(f"{self.path} is a symbolic link, not this program's lock file; remove it (its "
                                  "target is left as it was)") from None
            raise ConfigError(f"cannot create {self.path} ({err.strerror}); choose another hydra.run.dir") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(fd)
            what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
            raise ConfigError(f"{self.path} is {what}, not this program's lock file; remove it (the file is left "
                              "as it was)")
        return fd

    def _take_by_pid(self, fd: int) -> None:
        """No flock here: refuse a holder that is alive on this host (or on another host); take a dead one's lock."""
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
        holder = dict(zip(words[::2], words[1::2], strict=False))
        if "pid" not in holder or int(holder["pid"]) == os.getpid():
            return
        if holder.get("host") != socket.gethostname() or alive(int(holder["pid"])):
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another run ({' '.join(words)}); if that process "
                              f"is gone, delete {self.path}")

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: removing it would race with a process opening it)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None


def alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def claim(decided: Plan, data: Mapping[str, str], first_files: Mapping[str, str], own: Collection[str] = ()) -> RunLock:
    """Take the folder for this run (under its lock, re-checking what `plan` saw): a new run writes the marker
    (with the data fingerprint) and `first_files` (relative path -> text); a resume checks that the data is
    the data the run started with. `own`: see contents. Returns the held lock."""
    folder = decided.path
    lock = RunLock(folder).acquire()
    try:
        if decided.action == "new":
            if any(name != MARKER for name in contents(folder, own)):  # another run got here first
                raise ConfigError(refusal(folder, contents(folder, own)))
            write_json(folder / MARKER, {"created": dt.datetime.now().isoformat(timespec="seconds"),
                                         "data": dict(data)})
            for name, text in first_files.items():
                write_text(folder / name, text)
        else:
            if (folder / FINISHED).is_file():
                raise ConfigError(f"{folder} holds a finished run ({FINISHED}): nothing to resume")
            check_same_data(folder, data)
    except BaseException:
        lock.release()
        raise
    return lock


def check_same_data(folder: Path, data: Mapping[str, str], finished: bool = False) -> None:
    """A resume refuses data that changed since the run started (its fingerprint in the marker), naming the file;
    `finished`: a resumed sweep skipping this finished point, whose result would then stand for other data."""
    try:
        recorded = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("data"), dict):
        return  # a run from before data fingerprints: nothing to compare with
    before = recorded["data"]
    for name in sorted(set(before) | set(data)):
        if before.get(name) != data.get(name):
            change = ("changed" if name in before and name in data else
                      "is read now but was not when it started" if name in data else "is no longer read")
            if finished:
                raise ConfigError(f"resume=true: {folder} holds a finished run of other data: {name} {change} "
                                  "since it ran (skipping it would report the old data's result); run the sweep "
                                  "into a new hydra.sweep.dir")
            raise ConfigError(f"resume=true: the data changed since the run started: {name} {change} "
                              "(resuming would mix two datasets); start a new run")
