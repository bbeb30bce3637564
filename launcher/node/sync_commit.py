"""The commit of a sync on the node: every step noted in the journal, then done.

``Session`` is one sync on this node (``node/sync.py`` keeps them by token). ``apply``
puts the staged tree in place; ``check_tree`` is what a host that shares the directory
with the writer does instead: it checks that it sees the committed tree whole.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any, BinaryIO

from launcher.node.errors import NodeError
from launcher.node.sync_disk import load_record, state_path, write_record
from launcher.node.sync_journal import DestinationLock, Journal, Step
from launcher.protocol.sync import SyncEntry, display_path, manifest_digest


@dataclasses.dataclass
class Staged:
    path: str
    file: BinaryIO | None
    hasher: Any
    written: int = 0


@dataclasses.dataclass
class Session:
    root: str
    entries: list[SyncEntry]
    previous: dict[str, SyncEntry]
    needed: set[int]
    deleted: list[str]
    staging: str
    staged: dict[int, Staged] = dataclasses.field(default_factory=dict)
    probe: str = ""
    lock: DestinationLock | None = None
    """Held by the host that writes the directory, from its plan to finish or abort."""
    journal: Journal | None = None
    committed: bool = False
    """Committed (or, on a host that shares the writer's directory, checked)."""
    aside: int = 0
    current: str = ""
    """The entry the commit is at: what its error names."""


def apply(session: Session) -> None:
    """Deletions, then every entry, then the record: each step in the journal first."""
    session.journal = Journal(state_path(session.root, "journal"), session.staging)
    record = write_record(session.root, session.entries, session.staging)
    for path in session.deleted:
        session.current = path
        _set_aside(session, os.path.join(session.root, path))
    for index, entry in enumerate(session.entries):
        session.current = entry.path
        if index in session.needed:
            _place(session, index, entry)
        elif entry.kind == "f":
            _touch(session, entry)
    session.current = ""
    target = state_path(session.root, "record.json")
    _set_aside(session, target)
    _note(session, ["placed", target, os.lstat(record).st_ino])
    os.replace(record, target)
    session.journal.sync()


def check_tree(root: str, digest: str) -> None:
    """This host sees the tree ``digest`` in ``root``, as another host committed it.

    Files are opened, not only looked up: on NFS an open checks with the server
    (close-to-open), a cached lookup may still show the file the commit replaced."""
    entries = list(load_record(root).values())
    if manifest_digest(entries) != digest:
        raise NodeError("sync_failed", f"{display_path(root)}: the tree there is not the one just committed")
    for entry in entries:
        path = os.path.join(root, entry.path)
        try:
            if entry.kind == "l":
                same = os.readlink(path) == entry.digest
            else:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                same = stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (
                    entry.size,
                    entry.mtime_ns,
                    entry.mode,
                )
        except OSError as exc:
            raise NodeError("sync_failed", f"{display_path(path)}: {exc.strerror}, just committed") from None
        if not same:
            raise NodeError("sync_failed", f"{display_path(path)}: not the file just committed")


def _note(session: Session, step: Step) -> None:
    assert session.journal is not None  # apply opened it
    session.journal.note(step)


def _place(session: Session, index: int, entry: SyncEntry) -> None:
    target = os.path.join(session.root, entry.path)
    if entry.kind == "l":
        os.makedirs(session.staging, exist_ok=True)
        source = os.path.join(session.staging, str(index))
        os.symlink(entry.digest, source)
    else:
        staged = session.staged.get(index)
        if staged is None or staged.file is not None:
            raise NodeError("sync_failed", f"{display_path(target)}: did not arrive whole")
        source = staged.path
        os.chmod(source, entry.mode)
        os.utime(source, ns=(entry.mtime_ns, entry.mtime_ns))
    _make_parents(session, entry.path)
    _set_aside(session, target)
    _note(session, ["placed", target, os.lstat(source).st_ino])
    os.replace(source, target)


def _touch(session: Session, entry: SyncEntry) -> None:
    """Content already here: set the mode and mtime the tree has, noting the old ones."""
    target = os.path.join(session.root, entry.path)
    st = os.lstat(target)
    if stat.S_IMODE(st.st_mode) != entry.mode:
        _note(session, ["chmod", target, stat.S_IMODE(st.st_mode)])
        os.chmod(target, entry.mode)
    if st.st_mtime_ns != entry.mtime_ns:
        _note(session, ["utime", target, st.st_atime_ns, st.st_mtime_ns])
        os.utime(target, ns=(st.st_atime_ns, entry.mtime_ns))


def _set_aside(session: Session, target: str) -> None:
    """Move what is at ``target`` into the staging directory, to be put back by an undo."""
    if not os.path.lexists(target):
        return
    if os.path.isdir(target) and not os.path.islink(target):
        _note(session, ["rmdir", target])
        os.rmdir(target)  # a directory only gives way when empty: OSError ENOTEMPTY names it
        return
    os.makedirs(os.path.join(session.staging, "old"), exist_ok=True)
    session.aside += 1
    aside = os.path.join(session.staging, "old", str(session.aside))
    _note(session, ["aside", target, aside])
    os.replace(target, aside)


def _make_parents(session: Session, path: str) -> None:
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        directory = os.path.join(session.root, *parts[:depth])
        if os.path.isdir(directory):
            continue
        _note(session, ["mkdir", directory])
        os.mkdir(directory)  # a file in the way: FileExistsError names it
