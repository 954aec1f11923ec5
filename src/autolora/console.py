"""The console streams, whatever the locale: under LC_ALL=C (PYTHONUTF8=0) Python's stdout and stderr are
ASCII, and the summary's '·', a user's non-ASCII path or a data file's text in an error line would end a
finished run in UnicodeEncodeError."""

from __future__ import annotations

import codecs
import sys


def tolerate_any_encoding() -> None:
    """stdout and stderr in an encoding other than UTF write what it cannot encode as escapes (\\xb7)."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if not hasattr(stream, "reconfigure") or not encoding:
            continue  # a test's capture, or a stream replaced by a library
        if not codecs.lookup(encoding).name.startswith("utf"):
            stream.reconfigure(errors="backslashreplace")
