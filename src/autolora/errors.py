"""The exceptions that end a run with a status of its own (cli/main.py turns them into one line).

- UserError and its kinds: bad input (a config value, a data file, a ranks file, a model folder, a checkpoint
  this program cannot read). Exit status 2, one line naming the key, file or line.
- Diverged: a NaN/inf loss or alpha. Exit status 3; nothing from the bad steps is saved.
- Interrupted: SIGINT/SIGTERM/SIGHUP, acted on at a safe point. Exit status 128 + N.
"""

from __future__ import annotations

import signal


class UserError(ValueError):
    """Input that cannot run; the message names the key, file or line. Exit status 2."""


class ConfigError(UserError):
    """A config value that cannot run; the message names the key."""


class DataError(UserError):
    """Bad or missing data; the message names the file and line (or the split)."""


class RankKeyError(UserError):
    """The ranks given do not name exactly the model's target matrices."""


class TargetError(UserError):
    """model.targets names no projection of the model; the message lists its linear layers."""


class RanksFileError(UserError):
    """A ranks file that cannot be used; the message names the file and the key."""


class CorruptCheckpoint(UserError):
    """checkpoint.pt exists but cannot be read; the message says what to do."""


class Diverged(Exception):  # noqa: N818 - a training outcome, named as users say it
    """A loss or alpha became NaN/inf; nothing from the bad steps is saved. Exit status 3."""


class Interrupted(Exception):  # noqa: N818 - it is a stop, not an error
    """SIGINT/SIGTERM/SIGHUP arrived; the run stopped at a safe point, its state saved (or nothing to save).
    Exit status 128 + the signal's number."""

    def __init__(self, signum: int, *, where: str, saved: bool, step: int | None = None, started: bool = True):
        super().__init__(f"interrupted by {signal.Signals(signum).name} {where}")
        self.signum, self.saved, self.step, self.started = signum, saved, step, started
