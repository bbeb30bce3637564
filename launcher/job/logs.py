"""Logs: what a job printed on every host, read once or followed (filters apply on the nodes)."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from launcher.errors import LauncherError, message_of
from launcher.hosts.files import Host
from launcher.job.records import JobRecord
from launcher.protocol.logs import Follow, LogBatch, LogRecord, ReadLogs, Tail
from launcher.transport.agent import DEFAULT_SSH, NodeAgent, SshOptions, open_agent
from launcher.transport.fanout import for_each_host, handshakes, reconnecting, report_given_up
from launcher.transport.lost import LostHosts


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a job printed, labelled with where it came from."""

    host: str
    rank: int | None
    """Global rank, or None for the node's own messages (torchrun, launcher)."""
    stream: Literal["o", "e"]
    text: str
    time: float


async def read_logs(
    record: JobRecord,
    ssh: SshOptions = DEFAULT_SSH,
    *,
    tail: int | None = None,
    ranks: Sequence[int] = (),
    stderr_only: bool = False,
) -> tuple[list[LogLine], dict[str, str]]:
    """What the job printed so far, merged across hosts by time; and hosts that failed.

    ``tail``: only the last N lines of each rank (and of each node's own lines). The
    filters apply on the nodes, so only the lines shown cross the network.
    """
    failures: dict[str, str] = {}
    if tail is None:
        return [
            line async for line in merged_logs(record, ssh, failures, ranks=ranks, stderr_only=stderr_only)
        ], failures
    filters: dict[str, Any] = {"ranks": list(ranks) or None, "stderr_only": stderr_only}

    async def one(host: Host) -> list[LogLine]:
        agent = await open_agent(host, ssh, handshakes(ssh))
        try:
            lines, _ = await _tail(agent, record.name, tail, filters)
            return lines
        finally:
            await agent.close()

    results = await for_each_host(record.hosts, one)
    lines = [line for r in results if isinstance(r, list) for line in r]
    failures.update(_failures(record, results))
    lines.sort(key=lambda line: line.time)
    return lines, failures


async def merged_logs(
    record: JobRecord,
    ssh: SshOptions,
    failures: dict[str, str],
    *,
    ranks: Sequence[int] = (),
    stderr_only: bool = False,
) -> AsyncIterator[LogLine]:
    """What the job printed so far, every host's lines merged by time as they arrive: a
    batch or two per host in memory, whatever the size of the logs (``read_logs`` keeps
    them all). A host that cannot be read is put in ``failures``, by label."""
    filters: dict[str, Any] = {"ranks": list(ranks) or None, "stderr_only": stderr_only}
    batches: list[asyncio.Queue[list[LogLine] | None]] = [asyncio.Queue() for _ in record.hosts]
    room = [asyncio.Semaphore(2) for _ in record.hosts]  # batches read ahead per host; the end needs none

    async def read(indexed: tuple[int, Host]) -> None:
        index, host = indexed
        try:
            agent = await open_agent(host, ssh, handshakes(ssh))
            try:
                offset = 0
                while True:
                    await room[index].acquire()
                    answer = await agent.call(ReadLogs(job=record.name, offset=offset, **filters))
                    if answer.offset is None or answer.offset == offset:
                        return
                    # A node's two streams are written by two threads: by time, as read_logs sorts.
                    batch = sorted(_log_lines(host.label, answer.records), key=lambda line: line.time)
                    batches[index].put_nowait(batch)
                    offset = answer.offset
            finally:
                await agent.close()
        finally:
            batches[index].put_nowait(None)  # also when it failed or was cancelled: never waits

    reading = asyncio.ensure_future(for_each_host(list(enumerate(record.hosts)), read))
    try:
        heap: list[tuple[float, int, int, list[LogLine]]] = []  # (time, host, position, its batch)

        async def next_batch(index: int) -> None:
            while (batch := await batches[index].get()) is not None:
                room[index].release()
                if batch:
                    heapq.heappush(heap, (batch[0].time, index, 0, batch))
                    return

        await asyncio.gather(*(next_batch(i) for i in range(len(record.hosts))))
        while heap:
            _, index, position, batch = heapq.heappop(heap)
            yield batch[position]
            if position + 1 < len(batch):
                heapq.heappush(heap, (batch[position + 1].time, index, position + 1, batch))
            else:
                await next_batch(index)
        failures.update(_failures(record, await reading))
    finally:
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


def _failures(record: JobRecord, results: Sequence[object]) -> dict[str, str]:
    return {h.label: message_of(r) for h, r in zip(record.hosts, results, strict=True) if isinstance(r, LauncherError)}


async def follow_logs(
    record: JobRecord,
    ssh: SshOptions = DEFAULT_SSH,
    on_problem: Callable[[str, str], None] | None = None,
    reconnect_for: float = 300.0,
    *,
    tail: int | None = None,
    ranks: Sequence[int] = (),
    stderr_only: bool = False,
) -> AsyncIterator[LogLine]:
    """Lines as they are printed, from the start (or the last ``tail`` of each rank),
    until the job has ended on every host; filtered on the nodes as in ``read_logs``.

    A dropped connection is retried with backoff (for up to ``reconnect_for`` seconds)
    from the last byte received, so no line is lost or repeated; ``on_problem`` hears
    about it once per outage.
    """
    queue: asyncio.Queue[LogLine | None] = asyncio.Queue(maxsize=10_000)
    filters: dict[str, Any] = {"ranks": list(ranks) or None, "stderr_only": stderr_only}

    lost = LostHosts(len(record.hosts))

    async def one(indexed: tuple[int, Host]) -> None:
        index, host = indexed
        offset: int | None = None if tail is not None else 0

        async def session(agent: NodeAgent) -> None:
            nonlocal offset
            if offset is None:  # first the tail, whole (a retry must not repeat half of it), then on
                lines, end = await _tail(agent, record.name, tail or 0, filters)
                for line in lines:
                    await queue.put(line)
                offset = end
            async for message in agent.stream(Follow(job=record.name, offset=offset, **filters)):
                if isinstance(message, LogBatch):
                    for line in _log_lines(host.label, message.records):
                        await queue.put(line)
                else:
                    lost.named(message.lost_node)
                if message.offset is not None:
                    offset = message.offset

        waiting = reconnecting(host, ssh, session, on_problem, reconnect_for)
        await lost.unless_lost(index, host.label, waiting, on_problem)

    async def run_all() -> None:
        try:
            results = await for_each_host(list(enumerate(record.hosts)), one)
            report_given_up(record.hosts, results, on_problem)
        finally:
            await queue.put(None)

    runner = asyncio.ensure_future(run_all())
    try:
        while (line := await queue.get()) is not None:
            yield line
        await runner  # a bug in a follower must surface, not end the stream quietly
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _tail(agent: NodeAgent, job: str, count: int, filters: dict[str, Any]) -> tuple[list[LogLine], int]:
    """The last ``count`` lines of each rank on the agent's host, and the log offset they end at."""
    lines: list[LogLine] = []
    end = 0
    async for message in agent.stream(Tail(job=job, count=count, **filters)):
        if isinstance(message, LogBatch):
            lines.extend(_log_lines(agent.host.label, message.records))
        else:
            end = message.offset
    return lines, end


def _log_lines(host: str, records: list[LogRecord]) -> list[LogLine]:
    return [LogLine(host, r.rank, r.stream, r.text, r.time) for r in records]
