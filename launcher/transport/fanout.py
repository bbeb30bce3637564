"""Fan-out: one step on every host at once, all or nothing or best effort, and reconnecting.

Launch and sync use ``all_or_nothing`` (a failure cancels the rest); status, kill and logs use
``for_each_host`` (every host reported) and ``reconnecting`` (a dropped connection retried).
"""

from __future__ import annotations

import asyncio
import resource
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from launcher.errors import (
    AuthenticationError,
    HostError,
    HostKeyError,
    JobError,
    LauncherError,
    NodeRefusedError,
    VersionMismatchError,
    message_of,
)
from launcher.hosts.files import Host
from launcher.protocol.base import Request
from launcher.transport.agent import NodeAgent, SshOptions, open_agent

T = TypeVar("T")
A = TypeVar("A")


async def for_each_host(hosts: Sequence[T], action: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """Run ``action`` on every host at once; each result is its value or its LauncherError."""
    raise_open_files_limit(len(hosts))

    async def guarded(item: T) -> Any:
        try:
            return await action(item)
        except LauncherError as exc:
            return exc

    return list(await asyncio.gather(*(guarded(item) for item in hosts)))


async def all_or_nothing(steps: Sequence[Awaitable[T]], hosts: Sequence[Host], summary: str) -> list[T]:
    """One step per host at once; the first failure cancels the rest and raises JobError
    naming every host that failed (launch and sync: on every host or on none)."""
    if not steps:
        return []  # asyncio.wait refuses an empty set
    try:
        raise_open_files_limit(len(hosts))
    except LauncherError:
        for step in steps:
            if asyncio.iscoroutine(step):
                step.close()  # never started: no "never awaited" warning
        raise
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failures: dict[str, HostError] = {}
    for host, task in zip(hosts, tasks, strict=True):
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, HostError):
            failures[host.label] = exc
        elif exc is not None:
            raise exc
    if failures:
        raise JobError(summary, failures)
    return [task.result() for task in tasks]


def raise_open_files_limit(hosts: int) -> None:
    """Every fan-out calls this before it connects ``hosts`` at once: each holds a socket (a
    local host three pipes), and the usual soft limit (1024) runs out near a thousand hosts.
    The soft limit is raised to the hard one; a limit that still cannot cover the hosts is
    an error naming it, before any host is connected (not "Too many open files" midway)."""
    need = open_files_needed(hosts)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft != hard:
        # An unlimited hard limit (macOS) takes no unlimited soft one: raise it to what is needed.
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 4 * need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        raise LauncherError(f"{hosts} hosts need ~{need} open files; the limit is {soft} (ulimit -n)")


def open_files_needed(hosts: int) -> int:
    """A socket per host, a sixteenth more, and 64 for the rest: the simulation's launch
    peaks at the hosts plus 9 from 250 to 5,000 hosts (``docs/scaling.md``). Two per host
    refused 10,000 hosts under a hard limit of 20,000, which holds them."""
    return 64 + hosts + hosts // 16


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Semaphore]] = weakref.WeakKeyDictionary()


def handshakes(ssh: SshOptions) -> asyncio.Semaphore:
    """The gate of this event loop's handshakes: ``ssh.max_parallel`` in flight at once
    across every host of a fan-out (``ask``, ``reconnecting``, ``read_logs``), as launch
    and sync bound theirs. A connection holds it only while it is being opened."""
    gates = _GATES.setdefault(asyncio.get_running_loop(), {})
    return gates.setdefault(ssh.max_parallel, asyncio.Semaphore(ssh.max_parallel))


async def ask(host: Host, ssh: SshOptions, request: Request[A], timeout: float = 60.0) -> A:
    """One request on a connection of its own, closed after the answer."""
    agent = await open_agent(host, ssh, handshakes(ssh))
    try:
        return await agent.call(request, timeout=timeout)
    finally:
        await agent.close()


REFUSALS: tuple[type[HostError], ...] = (AuthenticationError, HostKeyError, NodeRefusedError, VersionMismatchError)
"""Answers that a retry would only hear again: ``reconnecting`` gives up on them at once."""

FIRST_PAUSE, LONGEST_PAUSE = 0.5, 10.0
"""``reconnecting``'s pauses between tries: doubling from the first up to the longest."""
SETTLED = 10.0
"""Seconds a session must last to count as progress (a ``Wait`` answers only at the job's end,
so time held is the one sign of progress every session gives)."""

_clock: Callable[[], float] = time.monotonic
_pause: Callable[[float], Awaitable[None]] = asyncio.sleep


async def reconnecting(
    host: Host,
    ssh: SshOptions,
    session: Callable[[NodeAgent], Awaitable[None]],
    on_problem: Callable[[str, str], None] | None,
    reconnect_for: float,
) -> None:
    """Run ``session`` over a connection to ``host`` until it returns.

    A connection that fails or drops, and a session that fails, are retried with pauses
    doubling from ``FIRST_PAUSE`` to ``LONGEST_PAUSE``, until a session makes progress
    (lasts ``SETTLED`` seconds); after ``reconnect_for`` seconds without progress the last
    error is raised. A login that succeeds is no progress: a session failing right after it
    would otherwise log in again and again without pause. A refusal (``REFUSALS``: keys,
    host key, the node's own no) is raised at once. ``on_problem`` hears once per outage.
    """
    pause = FIRST_PAUSE
    down_since: float | None = None
    told_reconnected = False
    while True:
        try:
            agent = await open_agent(host, ssh, handshakes(ssh))
        except REFUSALS:
            raise
        except HostError as exc:
            failure, problem = exc, f"{exc.message}; retrying"
        else:
            if down_since is not None and on_problem and not told_reconnected:
                on_problem(host.label, "reconnected")
                told_reconnected = True
            began = _clock()
            try:
                await session(agent)
                return
            except REFUSALS:
                raise
            except HostError as exc:
                failure, problem = exc, f"{exc.message}; reconnecting"
            finally:
                await agent.close()
            if _clock() - began >= SETTLED:
                down_since, pause, told_reconnected = None, FIRST_PAUSE, False
        if down_since is None:
            down_since = _clock()
            if on_problem:
                on_problem(host.label, problem)
        elif _clock() - down_since > reconnect_for:
            raise failure
        await _pause(pause)
        pause = min(pause * 2, LONGEST_PAUSE)


def report_given_up(
    hosts: Sequence[Host], results: Sequence[Any], on_problem: Callable[[str, str], None] | None
) -> None:
    """Tell ``on_problem`` of each host whose ``reconnecting`` session gave up."""
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, LauncherError) and on_problem:
            on_problem(host.label, f"gave up: {message_of(result)}")
