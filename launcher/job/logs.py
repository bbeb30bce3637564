"""Logs: what a job printed on every host, read once or followed (filters apply on the nodes)."""

from __future__ import annotations

import asyncio
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


@dataclass(frozen=True)
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
    filters: dict[str, Any] = {"ranks": list(ranks) or None, "stderr_only": stderr_only}

    async def one(host: Host) -> list[LogLine]:
        agent = await open_agent(host, ssh, handshakes(ssh))
        try:
            lines: list[LogLine] = []
            if tail is not None:
                lines, _ = await _tail(agent, record.name, tail, filters)
                return lines
            offset = 0
            while True:
                answer = await agent.call(ReadLogs(job=record.name, offset=offset, **filters))
                if answer.offset is None or answer.offset == offset:
                    return lines
                lines.extend(_log_lines(host.label, answer.records))
                offset = answer.offset
        finally:
            await agent.close()

    results = await for_each_host(record.hosts, one)
    lines = [line for r in results if isinstance(r, list) for line in r]
    failures = {
        h.label: message_of(r) for h, r in zip(record.hosts, results, strict=True) if isinstance(r, LauncherError)
    }
    lines.sort(key=lambda line: line.time)
    return lines, failures


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
