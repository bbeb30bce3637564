"""``Teardown``: how a job's supervisors watch each other, the part of a ``Start`` that the
supervisor reads. In a module of its own so that the supervisor, started on every host for
every job, imports no other message (``messages.py`` re-exports it)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Teardown:
    """How a job's supervisors watch each other (``node/teardown.py``)."""

    node: int
    address: str
    """Node 0's address, where its watcher listens."""
    port: int
    secret: str
    """The job's teardown secret (hex, the same on every node, drawn anew for each launch):
    every teardown connection proves it holds it before any line counts. Required, not
    defaulted: a Start without one fails to decode, so no supervisor ever watches
    unauthenticated (an empty one turns the watch off, noted in the job's log). It travels
    only inside the Start request and the run directory's ``spec.json``, never on a command
    line."""
    timeout: float = 15.0
    """Seconds of silence after which a node is lost (``launch --heartbeat-timeout``)."""
    nodes: int = 0
    """How many nodes the job has: node 0 expects each to connect (0: it expects none)."""
