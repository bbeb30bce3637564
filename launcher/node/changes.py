"""Woken when a run directory changes (Linux inotify, through ctypes), instead of polling it.

``logs --follow`` and ``launch --wait`` keep one agent per host waiting on the job for hours.
Polling its files every 50 ms (follow) or 250 ms (wait) costs each such agent about 1 % of a
core, and on an NFS home a stream of round trips; the supervisor's writes (a line of output,
``exit.json`` renamed into place) wake the wait instead. A wait still looks every
``SAFETY_POLL_S``: a supervisor killed with SIGKILL writes nothing. Where inotify is missing
(not Linux, no libc, the limit of watches reached), ``fileno()`` is None and callers poll.
"""

from __future__ import annotations

import ctypes
import os
import select
from pathlib import Path

SAFETY_POLL_S = 2.0
"""The longest a wait goes without looking, woken or not."""

_IN_MODIFY, _IN_ATTRIB, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x4, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class DirectoryWatch:
    """A file descriptor that becomes readable when a file in ``path`` is written, created
    or renamed into it. A context manager; ``drain()`` after each wake."""

    def __init__(self, path: Path) -> None:
        self._fd = _inotify(path)

    def fileno(self) -> int | None:
        return self._fd

    def drain(self) -> None:
        """Forget the events so far (the caller is about to look anyway)."""
        while self._fd is not None:
            try:
                if not os.read(self._fd, 65536):
                    return
            except BlockingIOError:
                return

    def wait(self, seconds: float) -> bool:
        """Up to ``seconds`` for a change (True), without a stdin to watch (tests, a local call)."""
        if self._fd is None:
            select.select([], [], [], seconds)
            return False
        readable, _, _ = select.select([self._fd], [], [], seconds)
        return bool(readable)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inotify(path: Path) -> int | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    fd = int(init(_IN_NONBLOCK | _IN_CLOEXEC))
    if fd < 0:
        return None
    if int(add(fd, os.fsencode(str(path)), _IN_MODIFY | _IN_ATTRIB | _IN_MOVED_TO | _IN_CREATE)) < 0:
        os.close(fd)
        return None
    return fd
