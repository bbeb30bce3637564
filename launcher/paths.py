"""Where launcher keeps its files, on the launching machine and on the nodes."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """``$XDG_STATE_HOME/launcher``, or ``~/.local/state/launcher``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "launcher"


def records_dir() -> Path:
    """Local records of launched jobs (on the launching machine)."""
    return state_dir() / "jobs"


def runs_dir() -> Path:
    """Every job's node files (on a node)."""
    return state_dir() / "runs"


def run_dir(job: str, hostname: str) -> Path:
    """One node's files for one job.

    Homes are often shared between nodes (NFS), so the node's hostname is part of the
    path: two nodes of a job never write the same file.
    """
    return runs_dir() / job / hostname
