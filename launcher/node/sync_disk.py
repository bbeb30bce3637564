"""What a sync keeps on the node's disk besides the tree, in the destination's hidden state
directory ``<root>/.launcher-sync-state/`` (0700; its files 0600):

    record.json                        the manifest of the last good sync of this directory:
                                       what the next plan trusts, and what tells which files a
                                       deletion may remove (never a file no sync put there)
    lock, journal                      see ``sync_journal.py``
    probe-<hostname>-<pid>-<token>     written during a sync's plan: the hosts that see each
                                       other's probes share this directory (one of them writes)

The record is the directory's, not a host's: every host that shares the directory reads
the same one, so a re-sync with nothing changed is one round trip on each of them.
Older versions kept it in ``<state>/launcher/sync/<hostname>/<hash of root>.json``: read
when the directory has none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time

from launcher.protocol.paths import old_sync_records_dir
from launcher.protocol.sync import STAGING_PREFIX, SyncEntry

STATE_NAME = f"{STAGING_PREFIX}state"
_PROBE_STALE_S = 3600.0
"""A probe is needed for seconds (between a sync's plan and its look); one this old was left
by an agent that died."""


def state_path(root: str, name: str = "") -> str:
    """``<root>/.launcher-sync-state[/name]``."""
    return os.path.join(root, STATE_NAME, name) if name else os.path.join(root, STATE_NAME)


def make_state_dir(root: str) -> str:
    """The state directory (and ``root``, on a first sync), private to its user."""
    path = state_path(root)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def write_probe(root: str, token: str) -> str:
    """A file only hosts that see this very directory see; its name."""
    name = f"probe-{socket.gethostname()}-{os.getpid()}-{token}"
    os.close(os.open(state_path(root, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    return name


def remove_probe(root: str, name: str) -> None:
    if name:
        with _quiet():
            os.unlink(state_path(root, name))


def seen_probes(root: str, names: list[str]) -> list[int]:
    """Which of ``names`` are here. Each one is looked up by name (not listed): on NFS a
    lookup is checked with the server, a cached directory listing may not be."""
    return [
        i
        for i, name in enumerate(names)
        if name.startswith("probe-") and "/" not in name and os.path.exists(state_path(root, name))
    ]


def remove_stale(root: str, keep: str = "") -> None:
    """Under the lock, nobody else writes ``root``: every staging directory but ``keep`` was
    left by an agent that is gone (on this host or another sharing the directory)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(STAGING_PREFIX) and name not in (STATE_NAME, keep):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
    try:
        probes = [n for n in os.listdir(state_path(root)) if n.startswith("probe-")]
    except OSError:
        return
    now = time.time()
    for name in probes:
        with _quiet():
            if now - os.lstat(state_path(root, name)).st_mtime > _PROBE_STALE_S:
                os.unlink(state_path(root, name))


def remove_empty_parents(root: str, path: str) -> None:
    parts = path.split("/")[:-1]
    while parts:
        try:
            os.rmdir(os.path.join(root, *parts))
        except OSError:
            return
        parts.pop()


def _old_record_path(root: str) -> str:
    import hashlib

    name = hashlib.blake2b(root.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return str(old_sync_records_dir() / f"{name}.json")


def load_record(root: str) -> dict[str, SyncEntry]:
    """The manifest of the last good sync of ``root`` (empty: none, or damaged, when the plan
    checks every file by its content)."""
    for path in (state_path(root, "record.json"), _old_record_path(root)):
        try:
            with open(path, encoding="utf-8") as file:  # open: on NFS, fresh from the server
                data = json.load(file)
            if data.get("root") != root:
                continue
            return {e[0]: SyncEntry(*e) for e in data["entries"]}
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}
    return {}


def write_record(root: str, entries: list[SyncEntry], staging: str) -> str:
    """The record of ``entries``, written under ``staging`` for the commit to put in place."""
    os.makedirs(staging, exist_ok=True)
    path = os.path.join(staging, "record.json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
        json.dump({"root": root, "entries": [list(e) for e in entries]}, file)
    return path


def _quiet() -> contextlib.AbstractContextManager[None]:
    return contextlib.suppress(OSError)
