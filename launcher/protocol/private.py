"""Directories and files that no other user can read: everything under ``<state>/launcher``.

A job's files hold its environment (a forwarded ``HF_TOKEN``, a ``-e WANDB_API_KEY=...``) and
its output, and a home on a shared cluster is often 0755 (NFS). So every directory made here
is 0700 and every file 0600 from the moment it exists, whatever the umask: ``os.mkdir`` and
``os.open`` with the mode, then ``chmod``/``fchmod`` to say it explicitly (a umask only takes
bits away; a strange one such as 0277 would take the owner's too). A file is created empty,
and only then written.

A directory of ours left open by an older version is tightened (group and other bits taken
away); one that belongs to another user is refused (``NotPrivateError``, naming it). Both
sides use this module: the nodes for run directories and sync manifests, the launching
machine for its job records, its sync cache and ``launcher sbatch -o``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_OPEN_TO_OTHERS = 0o077


class NotPrivateError(PermissionError):
    """A directory of ours that other users can read and this user cannot make private."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"{path} is readable by other users and cannot be made private ({reason}):"
            " fix its owner or mode (chmod 700), or set XDG_STATE_HOME elsewhere"
        )


def make_dirs(top: Path, *parts: str) -> Path:
    """``top/part/...``, each directory this user's only (0700): made where missing,
    tightened where open to others. What lies above ``top`` is made where missing (with
    the umask's mode) and otherwise left as it is: not ours to judge."""
    top.parent.mkdir(parents=True, exist_ok=True)
    path = top
    make_dir(path)
    for part in parts:
        path = path / part
        make_dir(path)
    return path


def make_dir(path: Path) -> None:
    """One directory (its parent exists): 0700 if made now, tightened if open to others."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        _tighten(path)
    else:
        os.chmod(path, DIR_MODE)


def _tighten(path: Path) -> None:
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode) or not mode & _OPEN_TO_OTHERS:
        return  # not a directory: the caller's next step says so, with its own error
    if st.st_uid != os.geteuid():
        raise NotPrivateError(path, f"mode {mode:04o}, owned by uid {st.st_uid}, not by this user")
    try:
        os.chmod(path, mode & ~_OPEN_TO_OTHERS)
    except OSError as exc:
        raise NotPrivateError(path, f"mode {mode:04o}: {exc.strerror or exc}") from None


def write_file(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """``path`` holding ``data``, atomically (a reader sees the old file or the whole new
    one), readable only by this user from its first byte on (``mode``: 0600, or 0700 for a
    script). A new inode: whoever held the old file open never sees the new content."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & DIR_MODE)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_append(path: Path) -> int:
    """A descriptor appending to ``path``, made 0600 (and made so if it was not)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch(path: Path) -> None:
    """An empty marker file (or the one already there), 0600."""
    os.close(open_append(path))
