"""The sync's last steps on the launching side, and who writes a directory that hosts share.

writers_of  the hosts that see each other's probes share their directory: the first of
            them (in hosts order) writes it, the others only check it after the commit
commit      every writer commits, or the others put their previous copy back
verify      every host that shares a writer's directory sees the committed tree whole
finish      every host is told the sync is final; one that cannot be told (a connection
            lost after its commit) goes back to its previous copy by itself, or at the
            next sync of that directory (``node/sync_journal.py``), and the sync fails
            naming it
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from launcher.errors import HostError, JobError, LauncherError
from launcher.protocol.sync import SyncAbort, SyncCommit, SyncCommitted, SyncFinish, SyncLook, SyncVerify
from launcher.transport.agent import NodeAgent
from launcher.transport.fanout import all_or_nothing

NOTHING_CHANGED = "sync failed, nothing changed"
KEPT = "sync failed, every host keeps its previous copy"
NOT_FINISHED = "sync not finished on every host: those named go back to their previous copy (sync again)"


async def writers_of(agents: Sequence[NodeAgent], probes: Sequence[str], token: str) -> list[int]:
    """For each agent, the index of the one that writes its directory (itself, unless it
    shares it): the first, in the given order, of those that see each other's probes."""
    names = list(probes)
    answers = await all_or_nothing(
        [a.call(SyncLook(token=token, probes=names), timeout=120) for a in agents],
        [a.host for a in agents],
        NOTHING_CHANGED,
    )
    parent = list(range(len(agents)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for index, answer in enumerate(answers):
        for other in answer.seen:
            if 0 <= other < len(agents):
                a, b = root(index), root(other)
                parent[max(a, b)] = min(a, b)  # the group's root is its first host
    return [root(i) for i in range(len(agents))]


async def commit(agents: Sequence[NodeAgent], token: str) -> list[SyncCommitted]:
    """Commit on every writer; if one fails, the sync fails (and the caller aborts all)."""
    return await _everywhere([a.call(SyncCommit(token=token), timeout=300) for a in agents], agents)


async def verify(agents: Sequence[NodeAgent], token: str, digest: str) -> list[SyncCommitted]:
    return await _everywhere([a.call(SyncVerify(token=token, digest=digest), timeout=300) for a in agents], agents)


async def finish(agents: Sequence[NodeAgent], token: str) -> None:
    results = await asyncio.gather(
        *(a.call(SyncFinish(token=token), timeout=120) for a in agents), return_exceptions=True
    )
    _raise_failures(results, agents, NOT_FINISHED)


async def abort(agents: Sequence[NodeAgent], token: str) -> None:
    async def one(agent: NodeAgent) -> None:
        with contextlib.suppress(LauncherError):  # a lost host undoes its commit by itself, or later
            await agent.call(SyncAbort(token=token), timeout=60)

    await asyncio.gather(*(one(a) for a in agents))


async def _everywhere(calls: list[object], agents: Sequence[NodeAgent]) -> list[SyncCommitted]:
    results = await asyncio.gather(*calls, return_exceptions=True)  # type: ignore[call-overload]
    _raise_failures(results, agents, KEPT)
    return [r for r in results if isinstance(r, SyncCommitted)]


def _raise_failures(results: Sequence[object], agents: Sequence[NodeAgent], summary: str) -> None:
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, HostError):
            raise result
    failures = {a.host.label: r for a, r in zip(agents, results, strict=True) if isinstance(r, HostError)}
    if failures:
        raise JobError(summary, failures)
