"""Hydra's job log (<run dir>/<job name>.log), written only once the run has claimed its folder.

Hydra opens its log handlers when a job starts, before the run has checked its folder. A record logged in
between (a library's load report; under CI=1 transformers hands its records to the root logger) would create
the log file in a folder that may be someone else's, and then that file alone would make the run refuse its
own, new folder. So records wait in memory until `folder_claimed()`; a refused run writes no log file at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

MAX_PENDING = 10_000  # records kept before the claim; more are dropped (a refused run writes none anyway)


class ClaimedFolderLog(logging.FileHandler):
    """A FileHandler (conf/hydra/job_logging/autolora.yaml) that holds its records until the folder is claimed."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = "utf-8"):
        super().__init__(filename, mode, encoding, delay=True)
        self.pending: list[logging.LogRecord] | None = []  # None once the run owns the folder

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is None:
            super().emit(record)
        elif len(self.pending) < MAX_PENDING:
            self.pending.append(record)

    def start_writing(self) -> None:
        """The folder is this run's: write the records held so far, then every record as it comes."""
        pending, self.pending = self.pending or [], None
        for record in pending:
            super().emit(record)


def files_in(folder: Path) -> frozenset[str]:
    """The names of the log files that this process's logging writes in `folder` (a job logging config other than
    ours, e.g. hydra/job_logging=default, opens its file as the job starts): the run's own, not someone else's."""
    folder = Path(folder).absolute()
    return frozenset(Path(handler.baseFilename).name for handler in logging.getLogger().handlers
                     if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder)


def folder_claimed() -> None:
    """Called once the run holds its folder: the job log handlers (if Hydra set any up) start writing."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ClaimedFolderLog):
            handler.start_writing()
