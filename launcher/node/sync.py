"""A sync on the node: stage the new content, then put all of it in place, or none.

    plan     compare the manifest with what is here: a file the last sync put here, whose
             size and mtime are still what it recorded, is not read again (one ``lstat``);
             a file no sync recorded is hashed once when its size matches. First with a
             probe, so that the hosts sharing this directory find each other (``look``);
             then, on the one host that writes it, under the directory's lock, after
             rolling back a commit left unfinished (``sync_journal.py``)
    put      content arrives in chunks into ``<root>/.launcher-sync-<host>-<pid>-<token>/``
             (the same filesystem, so the rename into place is atomic), hashed as it comes
    commit   removed files, then every staged entry, renamed into place; what they replace
             is set aside in the staging directory, and every step is noted in the journal
             on disk first, so that a failure, here or (by ``abort``) on another host, or the
             end of this agent before ``finish``, puts the previous copy back
    verify   on a host that shares the directory with the writer: it sees the tree whole
    finish   drops the journal and what was set aside, and releases the lock

The record of the last good sync is in the directory itself (``sync_disk.py``), written
by the commit: what the next plan trusts, and what tells which files a deletion may
remove (never a file no sync put there, say a checkpoint).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import dataclasses
import os
import shutil
import socket
import stat
import sys

from launcher.node.errors import NodeError
from launcher.node.sync_commit import Session, Staged, apply, check_tree
from launcher.node.sync_disk import (
    load_record,
    make_state_dir,
    remove_empty_parents,
    remove_probe,
    remove_stale,
    seen_probes,
    state_path,
    write_probe,
)
from launcher.node.sync_journal import DestinationLock, remove_journal, roll_back, undo
from launcher.protocol.sync import (
    STAGING_PREFIX,
    SyncAbort,
    SyncClosed,
    SyncCommit,
    SyncCommitted,
    SyncEntry,
    SyncFinish,
    SyncLook,
    SyncNeeds,
    SyncPlan,
    SyncPut,
    SyncSeen,
    SyncStaged,
    SyncVerify,
    content_hasher,
    display_path,
    hash_file,
    manifest_digest,
)

_SESSIONS: dict[str, Session] = {}


def plan(request: SyncPlan) -> SyncNeeds:
    root = _check_root(request.root)
    if request.marker and os.path.exists(os.path.join(root, request.marker)):
        return SyncNeeds(needed=[], deleted=[], source=True)  # deleting here would delete the source
    for old in list(_SESSIONS):  # one sync at a time per agent: an earlier one is over
        abort(SyncAbort(token=old))
    lock, probe = _prepare(root, request)
    try:
        needs, session = _compare(root, request)
    except BaseException:
        remove_probe(root, probe)
        if lock is not None:
            lock.release()
        raise
    session.lock, session.probe = lock, probe
    _SESSIONS[request.token] = session
    return dataclasses.replace(needs, probe=probe)


def look(request: SyncLook) -> SyncSeen:
    session = _session(request.token)
    return SyncSeen(seen=seen_probes(session.root, request.probes))


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
            data = _from_base64(chunk.data)
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
    if session.lock is None:
        raise NodeError("bad_request", "a commit needs the directory's lock (plan with lock)")
    try:
        apply(session)
    except (OSError, NodeError) as exc:
        _undo(session)
        raise exc if isinstance(exc, NodeError) else _failed(session, session.current, exc) from None
    session.committed = True
    return SyncCommitted(
        digest=manifest_digest(session.entries), changed=len(session.needed), deleted=len(session.deleted)
    )


def verify(request: SyncVerify) -> SyncCommitted:
    """On a host that shares its directory with the host that wrote it."""
    session = _session(request.token)
    check_tree(session.root, request.digest)
    session.committed = True
    return SyncCommitted(digest=request.digest, changed=0, deleted=0)


def finish(request: SyncFinish) -> SyncClosed:
    session = _session(request.token)
    if not session.committed:
        raise NodeError("bad_request", "finish before commit")
    del _SESSIONS[request.token]
    if session.journal is not None:
        session.journal.close()
        remove_journal(session.journal.path)  # from here on, the new tree stays
        for path in session.deleted:
            remove_empty_parents(session.root, path)
    _close(session)
    return SyncClosed(restored=False)


def abort(request: SyncAbort) -> SyncClosed:
    session = _SESSIONS.pop(request.token, None)
    if session is None:
        return SyncClosed(restored=False)
    restored = session.committed and session.journal is not None
    _undo(session)
    _close(session)
    return SyncClosed(restored=restored)


@atexit.register
def _at_exit() -> None:
    """The connection ended (EOF on stdin) before finish: put the previous copy back."""
    for token in list(_SESSIONS):
        abort(SyncAbort(token=token))


# ---------------------------------------------------------------------------- plan


def _prepare(root: str, request: SyncPlan) -> tuple[DestinationLock | None, str]:
    """The lock (a host that writes ``root``) or a probe (the first plan), and no commit
    left unfinished in ``root``."""
    if not (request.lock or request.probe):
        return None, ""
    try:
        make_state_dir(root)
    except OSError as exc:
        if request.lock:
            raise NodeError("sync_failed", f"{display_path(root)}: cannot write there: {exc.strerror}") from None
        return None, ""  # a directory this host may not write: fine as long as it needs nothing
    journal = state_path(root, "journal")
    lock = DestinationLock(state_path(root, "lock"), root)
    if request.lock:
        lock.acquire()
        try:
            roll_back(journal, root)
            remove_stale(root)
        except BaseException:
            lock.release()
            raise
        return lock, ""
    if os.path.lexists(journal):
        with contextlib.suppress(OSError):
            if lock.try_acquire():  # else its agent still runs, or another host resolves it
                roll_back(journal, root)
        lock.release()
    try:
        return None, write_probe(root, request.token)
    except OSError:
        return None, ""  # no host can find it sharing the directory; if it must write, its lock says why not


def _compare(root: str, request: SyncPlan) -> tuple[SyncNeeds, Session]:
    previous = load_record(root)
    staging = os.path.join(root, f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{request.token}")
    if request.entries is None:
        entries = list(previous.values())
        intact = (
            not os.path.lexists(state_path(root, "journal"))  # a commit left unfinished: not to trust
            and manifest_digest(entries) == request.digest
            and all(_present(root, e, e) for e in entries)
        )
        if not intact:
            return SyncNeeds(needed=[], deleted=[], unknown=True), Session(root, [], previous, set(), [], staging)
    else:
        entries = request.entries
        for entry in entries:
            _check_path(entry.path)
    needed = [i for i, e in enumerate(entries) if not _present(root, e, previous.get(e.path))]
    names = {e.path for e in entries}
    deleted = sorted(p for p in previous if p not in names and os.path.lexists(os.path.join(root, p)))
    return SyncNeeds(needed=needed, deleted=deleted), Session(root, entries, previous, set(needed), deleted, staging)


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


def _open_staged(session: Session, index: int) -> Staged:
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
    staged = Staged(path=path, file=file, hasher=content_hasher())
    session.staged[index] = staged
    return staged


# ---------------------------------------------------------------------------- commit


def _undo(session: Session) -> None:
    """Put the previous copy back (a commit that failed, or was not finished)."""
    if session.journal is not None:
        undo(session.journal.steps)
        session.journal.close()
        remove_journal(session.journal.path)
        session.journal = None
    session.committed = False


def _close(session: Session) -> None:
    for staged in session.staged.values():
        if staged.file is not None:
            staged.file.close()
    shutil.rmtree(session.staging, ignore_errors=True)
    remove_probe(session.root, session.probe)
    if session.lock is not None:
        session.lock.release()


# ---------------------------------------------------------------------------- errors


def _session(token: str) -> Session:
    session = _SESSIONS.get(token)
    if session is None:
        raise NodeError("bad_request", f"no sync {token!r} under way here")
    return session


def _from_base64(data: str) -> bytes:
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(data, strict_mode=True)  # b64decode(validate=True): 2.5x slower
    return base64.b64decode(data, validate=True)  # Python 3.9 and 3.10 have no strict_mode


def _where(session: Session, path: str) -> str:
    return display_path(os.path.join(session.root, path) if path else session.root)


def _failed(session: Session, path: str, exc: OSError) -> NodeError:
    why = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        why = f"{display_path(os.fsdecode(exc.filename))} is in the way (not a directory)"
    elif exc.errno == 39:  # ENOTEMPTY: a directory where the tree has a file
        why = "a directory that is not empty is in the way"
    return NodeError("sync_failed", f"{_where(session, path)}: {why}")
