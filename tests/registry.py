"""A directory of JSON records, one per live test fixture (a cluster, a SLURM), under a lock.

What a crashed test run left behind is found from here: each record names the process
that created it, and whoever starts the next fixture sweeps the records whose creator is
gone (``tests/cluster.py``, ``tests/slurm_cluster.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Registry:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while records are read, written or swept (across processes)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self.directory / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def path(self, token: str) -> Path:
        return self.directory / f"{token}.json"

    def write(self, token: str, record: dict[str, object]) -> None:
        path = self.path(token)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        temporary.replace(path)  # never a torn record

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Every record by token; an unreadable one as ``{}`` (its fixture counts as stale)."""
        records: dict[str, dict[str, Any]] = {}
        for path in self.directory.glob("*.json"):
            try:
                records[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                records[path.stem] = {}
        return records

    def remove(self, token: str) -> None:
        self.path(token).unlink(missing_ok=True)
