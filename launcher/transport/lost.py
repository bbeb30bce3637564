"""Waiting on every host of a job, but not on a host the others lost.

``launch --wait`` and ``logs --follow`` hold one connection per host until the job ends
there, reconnecting for minutes when one drops. A host that the job's own supervisors
have declared lost (no heartbeat: ``Ended.lost_node``, ``LogEnd.lost_node``) will not
come back for this job: once any node names it, nobody waits out the reconnect window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class LostHosts:
    """One flag per host of the job, raised when a node names it lost."""

    def __init__(self, hosts: int) -> None:
        self._lost = [asyncio.Event() for _ in range(hosts)]

    def named(self, node: int | None) -> None:
        """A node's answer named ``node`` lost (None: it named nobody)."""
        if node is not None and 0 <= node < len(self._lost):
            self._lost[node].set()

    async def unless_lost(
        self, index: int, label: str, work: Awaitable[None], on_problem: Callable[[str, str], None] | None
    ) -> None:
        """Run ``work`` for host ``index``, or give it up once that host is named lost."""
        waiting = asyncio.ensure_future(work)
        given_up = asyncio.ensure_future(self._lost[index].wait())
        try:
            await asyncio.wait({waiting, given_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiting, given_up):
                task.cancel()
            await asyncio.gather(waiting, given_up, return_exceptions=True)
        failure = None if waiting.cancelled() else waiting.exception()
        if failure is not None:
            raise failure
        if waiting.cancelled() and on_problem:
            on_problem(label, "lost: the other hosts stopped hearing from it")
