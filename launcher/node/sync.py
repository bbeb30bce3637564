"""A sync on the node: stage the new content, then put all of it in place, or none.

    plan     compare the manifest with what is here: a file the last sync put here, whose
             size and mtime are still what it recorded, is not read again (one ``lstat``);
             a file no sync recorded is hashed once when its size matches
    put      content arrives in chunks into ``<root>/.launcher-sync-<host>-<pid>-<token>/``
             (the same filesystem, so the rename into place is atomic), hashed as it comes
    commit   removed files, then every staged entry, renamed into place; what they replace
             is set aside in the staging directory, and every step is noted so that a
             failure, here or (by ``abort``) on another host, puts the previous copy back
    finish   drops what was set aside, and records the manifest of this good sync

The manifest of the last good sync is ``<state>/launcher/sync/<hostname>/<hash of root>.json``
(the hostname because a home may be shared): what the next plan trusts, and what tells
which files a deletion may remove (never a file no sync put there, say a checkpoint).
"""

from __future__ import annotations

import binascii
import contextlib
import dataclasses
import os
import shutil
import socket
import stat
from collections.abc import Callable
from typing import Any, BinaryIO

from launcher.node.errors import NodeError
from launcher.node.sync_disk import hash_file, load_manifest, remove_empty_parents, remove_stale_staging, save_manifest
from launcher.protocol_sync import (
    STAGING_PREFIX,
    SyncAbort,
    SyncClosed,
    SyncCommit,
    SyncCommitted,
    SyncEntry,
    SyncFinish,
    SyncNeeds,
    SyncPlan,
    SyncPut,
    SyncStaged,
    display_path,
    manifest_digest,
)


@dataclasses.dataclass
class _Staged:
    path: str
    file: BinaryIO | None
    hasher: Any
    written: int = 0


@dataclasses.dataclass
class _Session:
    root: str
    entries: list[SyncEntry]
    previous: dict[str, SyncEntry]
    needed: set[int]
    deleted: list[str]
    staging: str
    staged: dict[int, _Staged] = dataclasses.field(default_factory=dict)
    undo: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    committed: bool = False
    aside: int = 0


_SESSIONS: dict[str, _Session] = {}


def plan(request: SyncPlan) -> SyncNeeds:
    root = _check_root(request.root)
    if request.marker and os.path.exists(os.path.join(root, request.marker)):
        return SyncNeeds(needed=[], deleted=[], source=True)  # deleting here would delete the source
    previous = load_manifest(root)
    remove_stale_staging(root)
    if request.entries is None:
        entries = list(previous.values())
        intact = manifest_digest(entries) == request.digest and all(_present(root, e, e) for e in entries)
        if not intact:
            return SyncNeeds(needed=[], deleted=[], unknown=True)
    else:
        entries = request.entries
        for entry in entries:
            _check_path(entry.path)
    needed = [i for i, e in enumerate(entries) if not _present(root, e, previous.get(e.path))]
    names = {e.path for e in entries}
    deleted = sorted(p for p in previous if p not in names and os.path.lexists(os.path.join(root, p)))
    staging = os.path.join(root, f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{request.token}")
    for old in list(_SESSIONS):
        _drop(_SESSIONS.pop(old))
    _SESSIONS[request.token] = _Session(root, entries, previous, set(needed), deleted, staging)
    return SyncNeeds(needed=needed, deleted=deleted)


def put(request: SyncPut) -> SyncStaged:
    session = _session(request.token)
    for chunk in request.chunks:
        if chunk.entry not in session.needed:
            raise NodeError("bad_request", f"entry {chunk.entry} was not asked for")
        entry = session.entries[chunk.entry]
        staged = session.staged.get(chunk.entry) or _open_staged(session, chunk.entry)
        if staged.file is None or chunk.offset != staged.written:  # complete already, or out of order
            raise NodeError(
                "bad_request", f"{display_path(entry.path)}: chunk at {chunk.offset}, expected {staged.written}"
            )
        try:
            data = binascii.a2b_base64(chunk.data, strict_mode=True)  # b64decode(validate=True): 2.5x slower
        except binascii.Error:
            raise NodeError("bad_request", f"{display_path(entry.path)}: a chunk is no base64") from None
        try:
            staged.file.write(data)
            staged.hasher.update(data)
            staged.written += len(data)
            if staged.written >= entry.size:
                staged.file.close()
                staged.file = None
        except OSError as exc:
            raise _failed(session, entry.path, exc) from None
        if staged.file is None and (staged.written != entry.size or staged.hasher.hexdigest() != entry.digest):
            raise NodeError("sync_failed", f"{_where(session, entry.path)}: arrived damaged (size or hash differ)")
    return SyncStaged(staged=sum(1 for s in session.staged.values() if s.file is None))


def commit(request: SyncCommit) -> SyncCommitted:
    session = _session(request.token)
    if session.committed:
        raise NodeError("bad_request", "this sync is committed already")
    current = ""
    try:
        for path in session.deleted:
            current = path
            _set_aside(session, path)
        for index, entry in enumerate(session.entries):
            current = entry.path
            if index in session.needed:
                _place(session, index, entry)
            elif entry.kind == "f":
                _touch(session, entry)
        current = ""
        save_manifest(session.root, session.entries, session.undo)
    except OSError as exc:
        _undo(session)
        raise _failed(session, current, exc) from None
    session.committed = True
    return SyncCommitted(
        digest=manifest_digest(session.entries), changed=len(session.needed), deleted=len(session.deleted)
    )


def finish(request: SyncFinish) -> SyncClosed:
    session = _session(request.token)
    if not session.committed:
        raise NodeError("bad_request", "finish before commit")
    _drop(_SESSIONS.pop(request.token))
    for path in session.deleted:
        remove_empty_parents(session.root, path)
    return SyncClosed(restored=False)


def abort(request: SyncAbort) -> SyncClosed:
    session = _SESSIONS.pop(request.token, None)
    if session is None:
        return SyncClosed(restored=False)
    restored = session.committed
    if restored:
        _undo(session)
    _drop(session)
    return SyncClosed(restored=restored)


# ---------------------------------------------------------------------------- plan


def _check_root(root: str) -> str:
    if not os.path.isabs(root) or "\0" in root:
        raise NodeError("bad_request", f"the sync directory must be an absolute path, got {display_path(root)}")
    return os.path.normpath(root)


def _check_path(path: str) -> None:
    parts = path.split("/")
    if "\0" in path or any(p in ("", ".", "..") for p in parts) or parts[0].startswith(STAGING_PREFIX):
        raise NodeError("bad_request", f"not a name inside the tree: {display_path(path)}")


def _present(root: str, entry: SyncEntry, previous: SyncEntry | None) -> bool:
    """Whether ``entry``'s content is here already (its mode and mtime may still differ)."""
    target = os.path.join(root, entry.path)
    try:
        st = os.lstat(target)
        if entry.kind == "l":
            return stat.S_ISLNK(st.st_mode) and os.readlink(target) == entry.digest
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
            return False
        if previous is not None and previous.kind == "f":
            return previous.digest == entry.digest and (st.st_size, st.st_mtime_ns) == (
                previous.size,
                previous.mtime_ns,
            )
        return hash_file(target) == entry.digest
    except OSError:
        return False


# ---------------------------------------------------------------------------- put


def _open_staged(session: _Session, index: int) -> _Staged:
    import hashlib

    entry = session.entries[index]
    if entry.kind != "f":
        raise NodeError("bad_request", f"{display_path(entry.path)} is a symlink: it has no content to send")
    path = os.path.join(session.staging, str(index))
    try:
        os.makedirs(session.staging, exist_ok=True)
    except OSError as exc:
        raise NodeError("sync_failed", f"{_where(session, '')}: cannot write there: {exc.strerror}") from None
    try:
        file = open(path, "wb")  # noqa: SIM115 - kept open across requests, closed when complete
    except OSError as exc:
        raise _failed(session, entry.path, exc) from None
    staged = _Staged(path=path, file=file, hasher=hashlib.blake2b(digest_size=16))
    session.staged[index] = staged
    return staged


# ---------------------------------------------------------------------------- commit


def _place(session: _Session, index: int, entry: SyncEntry) -> None:
    target = os.path.join(session.root, entry.path)
    if entry.kind == "l":
        os.makedirs(session.staging, exist_ok=True)
        source = os.path.join(session.staging, str(index))
        os.symlink(entry.digest, source)
    else:
        staged = session.staged.get(index)
        if staged is None or staged.file is not None:
            raise NodeError("sync_failed", f"{_where(session, entry.path)}: did not arrive whole")
        source = staged.path
        os.chmod(source, entry.mode)
        os.utime(source, ns=(entry.mtime_ns, entry.mtime_ns))
    _make_parents(session, entry.path)
    _set_aside(session, entry.path)
    os.replace(source, target)
    session.undo.append(lambda: os.unlink(target))


def _touch(session: _Session, entry: SyncEntry) -> None:
    """Content already here: set the mode and mtime the tree has, noting the old ones."""
    target = os.path.join(session.root, entry.path)
    st = os.lstat(target)
    mode, times = stat.S_IMODE(st.st_mode), (st.st_atime_ns, st.st_mtime_ns)
    if mode != entry.mode:
        os.chmod(target, entry.mode)
        session.undo.append(lambda: os.chmod(target, mode))
    if st.st_mtime_ns != entry.mtime_ns:
        os.utime(target, ns=(st.st_atime_ns, entry.mtime_ns))
        session.undo.append(lambda: os.utime(target, ns=times))


def _set_aside(session: _Session, path: str) -> None:
    """Move what is at ``path`` into the staging directory, to be put back by ``_undo``."""
    target = os.path.join(session.root, path)
    if not os.path.lexists(target):
        return
    if os.path.isdir(target) and not os.path.islink(target):
        os.rmdir(target)  # a directory only gives way when empty: OSError ENOTEMPTY names it
        session.undo.append(lambda: os.mkdir(target))
        return
    os.makedirs(os.path.join(session.staging, "old"), exist_ok=True)
    session.aside += 1
    aside = os.path.join(session.staging, "old", str(session.aside))
    os.replace(target, aside)
    session.undo.append(lambda: os.replace(aside, target))


def _make_parents(session: _Session, path: str) -> None:
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        directory = os.path.join(session.root, *parts[:depth])
        if os.path.isdir(directory):
            continue
        os.mkdir(directory)  # a file in the way: FileExistsError names it
        session.undo.append(lambda d=directory: os.rmdir(d))  # type: ignore[misc]


def _undo(session: _Session) -> None:
    while session.undo:
        step = session.undo.pop()
        with contextlib.suppress(OSError):  # best effort: each step on its own
            step()
    session.committed = False


def _drop(session: _Session) -> None:
    for staged in session.staged.values():
        if staged.file is not None:
            staged.file.close()
    shutil.rmtree(session.staging, ignore_errors=True)


# ---------------------------------------------------------------------------- errors


def _session(token: str) -> _Session:
    session = _SESSIONS.get(token)
    if session is None:
        raise NodeError("bad_request", f"no sync {token!r} under way here")
    return session


def _where(session: _Session, path: str) -> str:
    return display_path(os.path.join(session.root, path) if path else session.root)


def _failed(session: _Session, path: str, exc: OSError) -> NodeError:
    why = exc.strerror or str(exc)
    if isinstance(exc, FileExistsError | NotADirectoryError) and exc.filename:
        why = f"{display_path(os.fsdecode(exc.filename))} is in the way (not a directory)"
    elif exc.errno == 39:  # ENOTEMPTY: a directory where the tree has a file
        why = "a directory that is not empty is in the way"
    return NodeError("sync_failed", f"{_where(session, path)}: {why}")
