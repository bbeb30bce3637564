"""Sending a tree's content to one host: chunks of base64 in the agent's JSON lines.

Several ``SyncPut`` requests are in flight per host (the node writes one while the next
arrives); the chunks come from ``chunks.py``, read, hashed and encoded once for all hosts,
and checked against the manifest, so a file that changed or vanished since the scan fails
the sync.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from launcher.protocol.sync import SyncChunk, SyncPut
from launcher.sync.chunks import Chunks
from launcher.transport.agent import NodeAgent

BATCH = 4 << 20
"""Bytes of content per ``SyncPut``."""
WINDOW = 3
"""``SyncPut`` requests in flight per host: the node writes one while the next arrives."""


@dataclass(frozen=True)
class SyncProgress:
    bytes_done: int
    bytes_total: int
    hosts_done: int
    hosts_total: int


async def stage_content(agent: NodeAgent, token: str, chunks: Chunks, needed: list[int], progress: Progress) -> None:
    """Send the content ``needed``, ``WINDOW`` requests in flight."""
    in_flight: set[asyncio.Future[object]] = set()
    try:
        async for batch, size in _batches(chunks, needed):
            if len(in_flight) >= WINDOW:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            task = asyncio.ensure_future(_put(agent, token, batch, size, progress))
            in_flight.add(task)
        for task in asyncio.as_completed(in_flight):
            await task
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)


async def _put(agent: NodeAgent, token: str, chunks: list[SyncChunk], size: int, progress: Progress) -> object:
    answer = await agent.call(SyncPut(token=token, chunks=chunks), timeout=120)
    progress.add(size)
    return answer


async def _batches(chunks: Chunks, needed: list[int]) -> AsyncIterator[tuple[list[SyncChunk], int]]:
    batch: list[SyncChunk] = []
    size = 0
    for index in needed:
        if chunks.tree.entries[index].kind != "f":
            continue  # a symlink travels in the manifest
        for chunk in chunks.of(index):
            batch.append(chunk)
            size += len(chunk.data) * 3 // 4
            if size >= BATCH:
                yield batch, size
                batch, size = [], 0
                await asyncio.sleep(0)  # let the other hosts' sends run
    if batch:
        yield batch, size


class Progress:
    """Bytes and hosts done, told to ``report`` as a ``SyncProgress``."""

    def __init__(self, total: int, hosts: int, report: Callable[[SyncProgress], None] | None) -> None:
        self.done, self.total, self.hosts, self.hosts_done = 0, total, hosts, 0
        self.report = report

    def add(self, size: int) -> None:
        self.done += size
        self._tell()

    def host_done(self) -> None:
        self.hosts_done += 1
        self._tell()

    def _tell(self) -> None:
        if self.report:
            self.report(SyncProgress(min(self.done, self.total), self.total, self.hosts_done, self.hosts))
