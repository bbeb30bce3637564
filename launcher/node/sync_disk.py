"""What a sync keeps on the node's disk besides the tree: the manifest of the last good
sync, and staging directories to clear.

The manifest is ``<state>/launcher/sync/<hostname>/<hash of root>.json`` (the hostname
because a home may be shared over NFS): what the next plan trusts, and what tells which
files a deletion may remove (never a file no sync put there, say a checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable

from launcher.node.rundir import state_dir
from launcher.protocol_sync import STAGING_PREFIX, SyncEntry


def hash_file(path: str) -> str:
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_staging(root: str) -> None:
    """Staging directories this host left behind (a connection lost mid-sync) whose agent is gone.
    Another host's, on a shared disk, are not this host's to judge."""
    mine = f"{STAGING_PREFIX}{socket.gethostname()}-"
    try:
        names = [n for n in os.listdir(root) if n.startswith(mine)]
    except OSError:
        return
    for name in names:
        pid = name[len(mine) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_empty_parents(root: str, path: str) -> None:
    parts = path.split("/")[:-1]
    while parts:
        try:
            os.rmdir(os.path.join(root, *parts))
        except OSError:
            return
        parts.pop()


def _manifest_path(root: str) -> str:
    import hashlib

    name = hashlib.blake2b(root.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return os.path.join(state_dir(), "launcher", "sync", socket.gethostname(), f"{name}.json")


def load_manifest(root: str) -> dict[str, SyncEntry]:
    try:
        with open(_manifest_path(root), encoding="utf-8") as file:
            data = json.load(file)
        if data.get("root") != root:
            return {}
        return {e[0]: SyncEntry(*e) for e in data["entries"]}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # none, or damaged: the plan then checks every file by its content


def save_manifest(root: str, entries: list[SyncEntry], undo: list[Callable[[], None]]) -> None:
    """Record ``entries`` as the last good sync of ``root``; ``undo`` gets the step back."""
    path = _manifest_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = path + ".previous"
    if os.path.exists(path):
        os.replace(path, old)
        undo.append(lambda: os.replace(old, path))
    else:
        undo.append(lambda: os.unlink(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump({"root": root, "entries": [list(e) for e in entries]}, file)
    os.replace(tmp, path)
