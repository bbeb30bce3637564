"""A guard against one way a killed login shell slows every later SSH login on the machine.

pyenv's hook in ``~/.bashrc`` runs ``pyenv rehash``, which takes a lock file in the shims
directory, here shared by every host (they share the filesystem). A shell killed while it
holds the lock (a job stopped while its tmux pane still reads ``~/.bashrc``; the launcher's
roll-back of a failed launch did that) leaves the file behind, and every login shell after
it waits ``PYENV_REHASH_TIMEOUT`` (60 s) for it. The benchmark's own clean-up never kills
a shell (``Site.scrub``); when something else did, this removes the stale lock and says
when it stood, so that the runs it slowed are marked failed instead of being averaged in.
Nothing happens on a machine without pyenv.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

STALE_AFTER_S = 70.0
"""Older than pyenv's timeout (60 s): no live rehash holds it any more."""
CHECK_EVERY_S = 2.0


def pyenv_lock() -> Path:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    return Path(root) / "shims" / ".pyenv-shim"


class StaleLockWatch:
    """Watches the lock in a thread; ``on_stale(created, removed)`` (Unix times) per removal."""

    def __init__(self, on_stale: Callable[[float, float], None]) -> None:
        self._on_stale = on_stale
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StaleLockWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        lock = pyenv_lock()
        while not self._stop.wait(CHECK_EVERY_S):
            try:
                created = lock.stat().st_mtime
            except FileNotFoundError:
                continue
            if time.time() - created > STALE_AFTER_S:
                lock.unlink(missing_ok=True)
                self._on_stale(created, time.time())
