"""Status, kill and logs: best effort per host, reporting every host (launch: launch.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from launcher.errors import HostError, LauncherError
from launcher.hosts import Host
from launcher.records import JobRecord
from launcher.ssh import NodeAgent, SshOptions, for_each_host, open_agent

JobState = Literal["running", "succeeded", "failed", "killed", "unknown"]
HostState = Literal["running", "succeeded", "failed", "killed", "unknown", "unreachable"]
DEFAULT_SSH = SshOptions()


@dataclass(frozen=True)
class RankStatus:
    rank: int
    state: str
    """running, succeeded, failed, killed, or ended (its node failed; it exited by itself)."""
    exit_code: int | None = None
    signal: str | None = None


@dataclass(frozen=True)
class RootCause:
    """The first failure of a job: where, which rank, how, and the traceback that explains it."""

    host: str
    rank: int | None
    exit_code: int | None
    signal: str | None
    exception: str
    traceback: tuple[str, ...]
    time: float | None


@dataclass(frozen=True)
class HostStatus:
    host: str
    state: HostState
    exit_code: int | None = None
    error: str | None = None
    """Why the host could not be asked, or why it stopped (another node failed)."""
    started_at: float | None = None
    ended_at: float | None = None
    restarts: int = 0
    ranks: tuple[RankStatus, ...] = ()
    stopped_by: int | None = None
    """The index of the node whose failure stopped this one."""


@dataclass(frozen=True)
class JobStatus:
    name: str
    state: JobState
    hosts: tuple[HostStatus, ...]
    root_cause: RootCause | None = None


@dataclass(frozen=True)
class HostKill:
    host: str
    verified: bool
    """True when nothing of the job is left on the host."""
    message: str


@dataclass(frozen=True)
class LogLine:
    host: str
    rank: int | None
    """Global rank, or None for the node's own messages (torchrun, launcher)."""
    stream: Literal["o", "e"]
    text: str
    time: float


# ---------------------------------------------------------------------------- status


async def job_status(record: JobRecord, ssh: SshOptions = DEFAULT_SSH) -> JobStatus:
    failures: list[RootCause] = []

    async def one(host: Host) -> HostStatus:
        answer = await _ask(host, ssh, "status", job=record.name)
        failure = answer.get("failure")
        if failure and answer.get("stopped_by") is None:
            failures.append(
                RootCause(
                    host=host.label,
                    rank=failure["rank"],
                    exit_code=failure["exit_code"],
                    signal=failure["signal"],
                    exception=failure["exception"],
                    traceback=tuple(failure["traceback"]),
                    time=failure["time"],
                )
            )
        stopped_by = answer.get("stopped_by")
        return HostStatus(
            host=host.label,
            state=answer["state"],
            exit_code=answer["exit_code"],
            error=None if stopped_by is None else f"stopped: {record.hosts[stopped_by].label} failed",
            started_at=answer.get("started_at"),
            ended_at=answer.get("ended_at"),
            restarts=answer.get("restarts", 0),
            ranks=_rank_states(answer),
            stopped_by=stopped_by,
        )

    results = await for_each_host(record.hosts, one)
    hosts = tuple(
        r if isinstance(r, HostStatus) else HostStatus(h.label, "unreachable", error=_message(r))
        for h, r in zip(record.hosts, results, strict=True)
    )
    root = min(failures, key=lambda f: f.time or float("inf"), default=None)
    return JobStatus(record.name, overall_state([h.state for h in hosts]), hosts, root)


def _rank_states(answer: dict[str, Any]) -> tuple[RankStatus, ...]:
    failed = answer.get("rank_failures", {})
    states = []
    for rank in answer.get("ranks", []):
        failure = failed.get(str(rank))
        if failure is not None:
            states.append(RankStatus(rank, "failed", failure["exit_code"], failure["signal"]))
        elif answer["state"] == "failed":
            states.append(RankStatus(rank, "ended"))
        else:
            states.append(RankStatus(rank, answer["state"], 0 if answer["state"] == "succeeded" else None))
    return tuple(states)


def overall_state(states: Sequence[str]) -> JobState:
    """One word for the job: a kill or failure anywhere marks the whole job."""
    if "killed" in states:
        return "killed"
    if "failed" in states:
        return "failed"
    if "running" in states:
        return "running"
    if states and all(s == "succeeded" for s in states):
        return "succeeded"
    return "unknown"


# ---------------------------------------------------------------------------- kill


async def kill_job(record: JobRecord, grace: float = 10.0, ssh: SshOptions = DEFAULT_SSH) -> list[HostKill]:
    async def one(host: Host) -> HostKill:
        answer = await _ask(host, ssh, "kill", timeout=grace + 60, job=record.name, grace=grace)
        return _host_kill(host.label, answer)

    results = await for_each_host(record.hosts, one)
    return [
        r if isinstance(r, HostKill) else HostKill(h.label, False, _message(r))
        for h, r in zip(record.hosts, results, strict=True)
    ]


async def kill_all_jobs(hosts: Sequence[Host], grace: float = 10.0, ssh: SshOptions = DEFAULT_SSH) -> list[HostKill]:
    """Kill every launcher job running on ``hosts``, whoever launched it."""

    async def one(host: Host) -> HostKill:
        answer = await _ask(host, ssh, "kill_all", timeout=grace + 120, grace=grace)
        kills = {name: _host_kill(host.label, result) for name, result in answer["jobs"].items()}
        if not kills:
            return HostKill(host.label, True, "no job running")
        verified = all(k.verified for k in kills.values())
        return HostKill(host.label, verified, "; ".join(f"{name}: {k.message}" for name, k in kills.items()))

    results = await for_each_host(hosts, one)
    return [
        r if isinstance(r, HostKill) else HostKill(h.label, False, _message(r))
        for h, r in zip(hosts, results, strict=True)
    ]


def _host_kill(label: str, answer: dict[str, Any]) -> HostKill:
    if answer.get("gpu_holders"):
        pids = ", ".join(str(pid) for pid in answer["gpu_holders"])
        return HostKill(label, False, f"nvidia-smi still lists GPU memory held by pid(s) {pids}")
    if answer["left"]:
        pids = ", ".join(str(pid) for pid, _ in answer["left"])
        return HostKill(label, False, f"{len(answer['left'])} process(es) still alive: {pids}")
    if answer["found"] == 0:
        return HostKill(label, True, f"already gone (the job had {answer['state_before']})")
    forced = f", {answer['forced']} needed SIGKILL" if answer["forced"] else ""
    return HostKill(label, True, f"killed {answer['found']} process(es){forced}; none left")


# ---------------------------------------------------------------------------- logs


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
        agent = await open_agent(host, ssh)
        try:
            lines: list[LogLine] = []
            if tail is not None:
                lines, _ = await _tail(agent, record.name, tail, filters)
                return lines
            offset = 0
            while True:
                answer = await agent.call("logs", job=record.name, offset=offset, **filters)
                if answer["offset"] == offset:
                    return lines
                lines.extend(_log_lines(host.label, answer["records"]))
                offset = answer["offset"]
        finally:
            await agent.close()

    results = await for_each_host(record.hosts, one)
    lines = [line for r in results if isinstance(r, list) for line in r]
    failures = {
        h.label: _message(r) for h, r in zip(record.hosts, results, strict=True) if isinstance(r, LauncherError)
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

    async def one(host: Host) -> None:
        offset: int | None = None if tail is not None else 0

        async def session(agent: NodeAgent) -> None:
            nonlocal offset
            if offset is None:  # first the tail, whole (a retry must not repeat half of it), then on
                lines, end = await _tail(agent, record.name, tail or 0, filters)
                for line in lines:
                    await queue.put(line)
                offset = end
            async for message in agent.stream("follow", job=record.name, offset=offset, **filters):
                for line in _log_lines(host.label, message.get("records", [])):
                    await queue.put(line)
                offset = message.get("offset", offset)

        await _reconnecting(host, ssh, session, on_problem, reconnect_for)

    async def run_all() -> None:
        try:
            _report_given_up(record.hosts, await for_each_host(record.hosts, one), on_problem)
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
    async for message in agent.stream("tail", job=job, count=count, **filters):
        lines.extend(_log_lines(agent.host.label, message.get("records", [])))
        end = message.get("offset", end)
    return lines, end


async def wait_for_end(
    record: JobRecord,
    ssh: SshOptions = DEFAULT_SSH,
    on_problem: Callable[[str, str], None] | None = None,
    reconnect_for: float = 300.0,
) -> None:
    """Return once the job no longer runs on any host (or a host stayed out of reach for
    ``reconnect_for`` seconds). One connection per host, which its node answers when
    the job ends there: no new login every poll on nodes busy training."""

    async def one(host: Host) -> None:
        async def session(agent: NodeAgent) -> None:
            await agent.call("wait", timeout=None, job=record.name)

        await _reconnecting(host, ssh, session, on_problem, reconnect_for)

    _report_given_up(record.hosts, await for_each_host(record.hosts, one), on_problem)


def _report_given_up(
    hosts: Sequence[Host], results: Sequence[Any], on_problem: Callable[[str, str], None] | None
) -> None:
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, LauncherError) and on_problem:
            on_problem(host.label, f"gave up: {_message(result)}")


async def _reconnecting(
    host: Host,
    ssh: SshOptions,
    session: Callable[[NodeAgent], Awaitable[None]],
    on_problem: Callable[[str, str], None] | None,
    reconnect_for: float,
) -> None:
    """Run ``session`` over a connection to ``host`` until it returns. A connection that
    fails or drops is retried with backoff for up to ``reconnect_for`` seconds;
    ``on_problem`` hears of it once per outage."""
    delay = 0.5
    down_since: float | None = None
    while True:
        try:
            agent = await open_agent(host, ssh)
        except HostError as exc:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > reconnect_for:
                raise
            if on_problem and delay == 0.5:
                on_problem(host.label, f"{exc.message}; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)
            continue
        if down_since is not None and on_problem:
            on_problem(host.label, "reconnected")
        down_since, delay = None, 0.5
        try:
            await session(agent)
            return
        except HostError as exc:
            down_since = time.monotonic()
            if on_problem:
                on_problem(host.label, f"{exc.message}; reconnecting")
        finally:
            await agent.close()


def _log_lines(host: str, records: list[list[Any]]) -> list[LogLine]:
    return [LogLine(host, rank, stream, text, stamp) for stamp, rank, stream, text in records]


# ---------------------------------------------------------------------------- helpers


async def _ask(host: Host, ssh: SshOptions, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
    agent = await open_agent(host, ssh)
    try:
        return await agent.call(op, timeout=timeout, **args)
    finally:
        await agent.close()


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, HostError) else str(exc)
