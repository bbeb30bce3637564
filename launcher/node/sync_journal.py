"""A commit's undo journal on the node's disk, and the lock on a sync's destination.

Both live in the destination's hidden state directory (``sync_disk.state_path``), so that
every host that sees the destination (a shared scratch or home) sees them too:

    lock      ``flock``ed by the one agent that writes the destination, from its plan to
              finish or abort (or its end: the kernel, or NFS's lock manager, drops it)
    journal   the undo log of the commit under way: a header line, then one JSON line per
              step, written *before* the step is done; gone once the commit is finished

The rule: **a journal that is still there when its lock is free was never finished**, so
its commit is rolled back (presumed abort). The launching side sends ``SyncFinish`` only
once every host committed, and a host whose finish never came may not keep a tree that
the others may have undone. Its agent rolls back itself when it can (the connection's end
reaches it as EOF on stdin); if it cannot (killed, the host rebooted), the next sync's plan
on any host that sees the destination takes the lock and rolls it back before anything else.

Every undo step checks that its step took effect, so a journal whose last step was
written but never done is undone correctly. The journal is fsynced before the first
rename and when the commit ends: a killed agent loses nothing (every line reached the
kernel before its step), and a power cut after the commit still finds the whole journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any

from launcher.node.errors import NodeError
from launcher.protocol.sync import display_path

Step = list[Any]
"""``["aside", target, aside]``, ``["placed", target, inode]``, ``["mkdir", path]``,
``["rmdir", path]``, ``["chmod", path, old_mode]``, ``["utime", path, atime_ns, mtime_ns]``."""


class Journal:
    """The open journal of one commit: ``note`` each step before doing it."""

    def __init__(self, path: str, staging: str) -> None:
        self.path = path
        self.steps: list[Step] = []
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._write({"staging": staging, "pid": os.getpid()})
        self.sync()

    def note(self, step: Step) -> None:
        self.steps.append(step)
        self._write(step)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write(self, line: object) -> None:
        os.write(self._fd, json.dumps(line).encode("utf-8", "surrogateescape") + b"\n")


def undo(steps: list[Step]) -> None:
    """Undo ``steps``, last first; each one only if it took effect, each on its own."""
    for step in reversed(steps):
        with contextlib.suppress(OSError, ValueError, TypeError, IndexError):
            _undo_step(step)


def _undo_step(step: Step) -> None:
    kind = step[0]
    if kind == "aside":
        if os.path.lexists(step[2]):
            os.replace(step[2], step[1])
    elif kind == "placed":
        if os.lstat(step[1]).st_ino == step[2]:  # the new one is there, not the old one
            os.unlink(step[1])
    elif kind == "mkdir":
        os.rmdir(step[1])
    elif kind == "rmdir":
        os.mkdir(step[1])
    elif kind == "chmod":
        os.chmod(step[1], step[2])
    elif kind == "utime":
        os.utime(step[1], ns=(step[2], step[3]))


def remove_journal(path: str) -> None:
    """The commit's end (finished, or undone): the journal goes, durably."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(os.path.dirname(path))


def roll_back(path: str, root: str) -> bool:
    """Undo the unfinished commit whose journal is ``path`` (the caller holds the lock);
    its staging directory goes too. False: there was none."""
    try:
        with open(path, "rb") as file:
            lines = file.read().decode("utf-8", "surrogateescape").splitlines()
    except FileNotFoundError:
        return False
    header: dict[str, Any] = {}
    steps: list[Step] = []
    for number, line in enumerate(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue  # the last line, cut short: its step was never done
        if number == 0 and isinstance(value, dict):
            header = value
        elif isinstance(value, list) and value:
            steps.append(value)
    undo(steps)
    staging = header.get("staging")
    if isinstance(staging, str) and os.path.dirname(staging) == root:
        shutil.rmtree(staging, ignore_errors=True)
    remove_journal(path)
    return True


def fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DestinationLock:
    """``flock`` on the destination's lock file: one sync writes a destination at a time.

    A second sync is refused at once (it does not wait): two syncs of one directory at
    the same time are a mistake to report, and waiting would hold the first sync's hosts.
    On NFS, Linux carries ``flock`` as a whole-file POSIX lock to the server, so the lock
    holds between hosts; the file is opened once per agent, since closing any descriptor
    of a POSIX-locked file drops the lock.
    """

    def __init__(self, path: str, root: str) -> None:
        self.path = path
        self.root = root
        self._fd = -1

    def try_acquire(self) -> bool:
        import fcntl

        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            return False
        return True

    def acquire(self) -> None:
        """Take the lock, or refuse in one line naming the destination."""
        try:
            taken = self.try_acquire()
        except OSError as exc:
            raise NodeError("sync_failed", f"{display_path(self.path)}: cannot lock: {exc.strerror}") from None
        if not taken:
            raise NodeError(
                "sync_failed", f"another sync into {display_path(self.root)} is under way (lock held); try again later"
            )

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # drops the lock
            self._fd = -1
