"""Where launcher keeps its state, on both sides: every directory, defined once.

``<state>`` is ``$XDG_STATE_HOME``, by default ``~/.local/state``; everything is under
``<state>/launcher``, 0700 (``private.py``)::

    <state>/launcher/jobs/<job>.json               the launching machine's job records
    <state>/launcher/sync-cache/                   the launching machine's file hashes between syncs
    <state>/launcher/runs/<job>/<hostname>/        a node's run directory (``node/rundir.py``)
    <state>/launcher/sync/<hostname>/<hash>.json   a node's sync records of an older version

The hostname is part of a node's paths because homes are often shared over NFS.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

RUNS_PATH = "launcher/runs"
"""Under each node's ``<state>``: ``<job>/<hostname>``."""
STATE_SHOWN = "${XDG_STATE_HOME:-~/.local/state}"
"""``<state>`` as a dry run shows it: only the node knows its own."""


def state_dir() -> Path:
    """``$XDG_STATE_HOME``, or ``~/.local/state``."""
    return Path(os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"))


def records_dir() -> Path:
    """``<state>/launcher/jobs`` on the launching machine."""
    return state_dir() / "launcher" / "jobs"


def sync_cache_dir() -> Path:
    """``<state>/launcher/sync-cache`` on the launching machine: hashes kept between syncs."""
    return state_dir() / "launcher" / "sync-cache"


def runs_dir() -> Path:
    """``<state>/launcher/runs`` on a node."""
    return state_dir() / RUNS_PATH


def run_dir_shown(job: str) -> str:
    """A node's run directory of ``job`` as a dry run shows it (``HOSTNAME`` for the node's)."""
    return f"{STATE_SHOWN}/{RUNS_PATH}/{job}/HOSTNAME"


def old_sync_records_dir() -> Path:
    """``<state>/launcher/sync/<hostname>`` on a node: where an older version kept its sync records."""
    return state_dir() / "launcher" / "sync" / socket.gethostname()
