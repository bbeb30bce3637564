"""The sync messages of the wire (``registry.py`` puts them in its tables); stdlib only.

A sync is one session per host, named by a token, over the agent's connection:

    SyncPlan    the tree's manifest -> SyncNeeds: what the node lacks, what it would delete;
                first with a probe (a file in the destination's state), to find the hosts
                that share a destination, then, on the one host of each that writes it,
                with the destination's lock
    SyncLook    which of the other hosts' probes this node sees -> SyncSeen
    SyncPut     new content in chunks, staged under temporary names      (as many as needed)
    SyncCommit  every staged entry renamed into place, removed files set aside, each step
                in a journal on disk first
    SyncVerify  on a host that shares the destination: it holds what the writer committed
    SyncFinish  every host committed: what was set aside is dropped, the lock released
    SyncAbort   another host failed: what was staged is dropped, a commit undone

So every host ends with the new tree, or every host keeps its previous one.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from launcher.protocol.base import Request

if TYPE_CHECKING:
    import hashlib

STAGING_PREFIX = ".launcher-sync-"
"""A top-level name no synced tree may use: the nodes' staging directories."""


class SyncEntry(NamedTuple):
    """One file or symlink of a synced tree (a tuple: a manifest has thousands)."""

    path: str
    """Relative, ``/``-separated; bytes that are no UTF-8 as ``os.fsdecode`` escapes them."""
    kind: Literal["f", "l"]
    mode: int
    """Permission bits (0 for a symlink)."""
    size: int
    mtime_ns: int
    digest: str
    """blake2b-128 of a file's content, hex; a symlink's target."""


class SyncChunk(NamedTuple):
    """Bytes of the plan's ``entry`` (its index), from ``offset`` on, base64."""

    entry: int
    offset: int
    data: str


@dataclasses.dataclass(frozen=True)
class SyncNeeds:
    needed: list[int]
    """Indexes of the entries whose content the node lacks."""
    deleted: list[str]
    """Paths the last sync put there that the new tree no longer has."""
    unknown: bool = False
    """Asked by digest only, the node has no intact copy of that tree: send the manifest."""
    source: bool = False
    """``root`` there is the very directory being synced (a shared disk, or this machine):
    the node leaves it alone."""
    probe: str = ""
    """The name of the probe it wrote (asked with ``probe``): for ``SyncLook``."""


@dataclasses.dataclass(frozen=True)
class SyncSeen:
    seen: list[int]
    """Indexes of the probes asked about that the node sees: those hosts share its ``root``."""


@dataclasses.dataclass(frozen=True)
class SyncStaged:
    staged: int
    """Entries whose content has arrived whole so far."""


@dataclasses.dataclass(frozen=True)
class SyncCommitted:
    digest: str
    """``manifest_digest`` of the tree now in place."""
    changed: int
    deleted: int


@dataclasses.dataclass(frozen=True)
class SyncClosed:
    restored: bool
    """An abort after a commit: the previous copy is back in place."""


@dataclasses.dataclass(frozen=True)
class SyncPlan(Request[SyncNeeds]):
    """Compare the tree ``entries`` with what is under ``root``; opens session ``token``.

    ``entries`` None: the tree is the one ``digest`` names; a node whose last good sync
    was that tree, still intact, needs nothing, and the manifest never travels (a re-sync
    with nothing changed: one small round trip, nothing decoded but the node's own record).
    """

    op: ClassVar[str] = "sync_plan"
    root: str
    token: str
    entries: list[SyncEntry] | None = None
    digest: str = ""
    marker: str = ""
    """A file the launching side put at the top of the tree for the plan: seen under
    ``root``, the node is looking at the source itself."""
    probe: bool = False
    """Write a probe into ``root``'s state, which the hosts that share ``root`` will see."""
    lock: bool = False
    """This host writes ``root``: take its lock (held until finish or abort), roll back a
    commit left unfinished, then plan."""


@dataclasses.dataclass(frozen=True)
class SyncLook(Request[SyncSeen]):
    """Which of ``probes`` (every host's, from their plans) are in this host's ``root``."""

    op: ClassVar[str] = "sync_look"
    token: str
    probes: list[str]


@dataclasses.dataclass(frozen=True)
class SyncPut(Request[SyncStaged]):
    op: ClassVar[str] = "sync_put"
    token: str
    chunks: list[SyncChunk]

    def wire_line(self) -> str | None:
        """The line JSON would write, without its scan of megabytes of base64 for characters
        to escape, once per host (~3 ms per MB): base64 has none, so the chunks go as they
        are. None (JSON writes it) when a chunk holds what would end the string or the line;
        any other character that is not base64 the node refuses either way."""
        if not all(c.data.isascii() and not any(x in c.data for x in _UNSAFE) for c in self.chunks):
            return None
        chunks = ", ".join('[%d, %d, "%s"]' % chunk for chunk in self.chunks)  # noqa: UP031 - one copy
        return '{"op": "sync_put", "token": %s, "chunks": [%s]}\n' % (json.dumps(self.token), chunks)  # noqa: UP031


_UNSAFE = ('"', "\\", "\n", "\r")


@dataclasses.dataclass(frozen=True)
class SyncCommit(Request[SyncCommitted]):
    """Put every staged entry in place and delete what the tree lost: all of it, or none."""

    op: ClassVar[str] = "sync_commit"
    token: str


@dataclasses.dataclass(frozen=True)
class SyncVerify(Request[SyncCommitted]):
    """Another host that shares ``root`` committed the tree ``digest``: check that this
    host sees it whole (the commit of a host that writes nothing)."""

    op: ClassVar[str] = "sync_verify"
    token: str
    digest: str


@dataclasses.dataclass(frozen=True)
class SyncFinish(Request[SyncClosed]):
    """Every host committed: drop the previous copy."""

    op: ClassVar[str] = "sync_finish"
    token: str


@dataclasses.dataclass(frozen=True)
class SyncAbort(Request[SyncClosed]):
    """Another host failed: drop what was staged, and undo a commit."""

    op: ClassVar[str] = "sync_abort"
    token: str


SYNC_ANSWERS: dict[type[Request[Any]], type[Any]] = {
    SyncPlan: SyncNeeds,
    SyncLook: SyncSeen,
    SyncPut: SyncStaged,
    SyncVerify: SyncCommitted,
    SyncCommit: SyncCommitted,
    SyncFinish: SyncClosed,
    SyncAbort: SyncClosed,
}


def content_hasher() -> hashlib.blake2b:
    """The hash both sides compare a file's content with (``SyncEntry.digest``): blake2b-128."""
    import hashlib  # here: every other operation of the node agent would pay for it

    return hashlib.blake2b(digest_size=16)


def hash_file(path: str) -> str:
    """A file's ``content_hasher`` digest, hex, read in blocks of 1 MiB (OSError passes)."""
    digest = content_hasher()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(entries: list[SyncEntry]) -> str:
    """What both sides call a tree: its names, kinds, modes and contents (not its times)."""
    digest = content_hasher()
    for entry in entries:
        digest.update(f"{entry.kind} {entry.mode:o} {entry.digest} ".encode())
        digest.update(entry.path.encode("utf-8", "surrogateescape") + b"\0")
    return digest.hexdigest()


def display_path(path: str) -> str:
    """A file name fit for one line of a message: control characters and bytes that are
    no UTF-8 escaped (``'a\\nb'``, ``'\\xff.py'``), and quoted only then."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text == path and path.isprintable():
        return path
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"
