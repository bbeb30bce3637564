"""The process that recovers a job launched with ``--restarts``, as seen from this machine.

``launch`` starts it here, detached from the shell (``launching/controller.py``); its pid and
start time are in the job's record (``JobRecord.watcher``). A pid alone could be a stranger's
after a reboot: the start time must match too. ``kill`` stops it before the hosts, so that
no restart races the kill; ``status`` says when it is gone (recovery no longer watched).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from launcher.errors import UsageError
from launcher.job.records import JobRecord, load_record, update_record

_SAME_START_S = 1.0
"""psutil's create time has clock-tick resolution: this close counts as the same process."""


def watcher_process(record: JobRecord) -> psutil.Process | None:
    """The job's watcher, if it still runs; None when it ended or never was."""
    if record.watcher is None:
        return None
    try:
        process = psutil.Process(int(record.watcher["pid"]))
        if abs(process.create_time() - float(record.watcher["since"])) > _SAME_START_S:
            return None  # the pid was taken again by another process
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None
    return process


def is_watched(record: JobRecord) -> bool:
    return watcher_process(record) is not None


def stop_watcher(record: JobRecord, grace: float = 30.0) -> bool:
    """Stop the watcher, if it runs: SIGTERM (it rolls back a restart it is in the middle
    of), then SIGKILL after ``grace`` seconds. True if one was running."""
    process = watcher_process(record)
    if process is None:
        return False
    try:
        process.terminate()
        try:
            process.wait(grace)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(5)
    except psutil.NoSuchProcess:
        pass
    return True


@dataclass(frozen=True)
class Attempt:
    """One attempt of a job launched with ``--restarts`` (``Job.attempts``)."""

    number: int
    hosts: tuple[str, ...]
    started_at: float
    ended_at: float | None = None
    state: str | None = None
    """How it ended (failed, hung, succeeded, killed); None while it runs."""
    cause: str | None = None
    """Its first failure, one line, or what the watcher did about it."""


@dataclass(frozen=True)
class Recovery:
    """Where the recovery of a job stands (``status``): from its record, no host asked."""

    attempt: int
    most: int
    """The last attempt allowed: ``--restarts`` + 1."""
    watched: bool
    """Its watcher runs; False once it ended, or when this machine lost it (a reboot)."""
    doing: str | None
    """What the watcher does or did last (``watching``, ``restarting: ...``, ``gave up: ...``)."""
    left_out: dict[str, str]
    """Host label -> why it is out and since when."""
    spares_in_use: tuple[str, ...]
    spares_left: tuple[str, ...]
    attempts: tuple[Attempt, ...]

    @property
    def finished(self) -> bool:
        """The watcher is done with the job: it ended, or recovery gave up or was stopped."""
        return (self.doing or "").startswith(("ended", "gave up", "stopped"))

    @property
    def settled(self) -> bool:
        """No attempt will follow: the watcher finished, or it is gone."""
        return self.finished or not self.watched


def attempts_of(record: JobRecord) -> tuple[Attempt, ...]:
    return tuple(
        Attempt(
            number=int(a["number"]),
            hosts=tuple(a.get("hosts", ())),
            started_at=float(a.get("started_at", 0.0)),
            ended_at=a.get("ended_at"),
            state=a.get("state"),
            cause=a.get("cause"),
        )
        for a in record.attempts
    )


def recovery_of(record: JobRecord) -> Recovery | None:
    """How the job's recovery stands; None for a job launched without ``--restarts``."""
    if not record.restarts:
        return None
    attempts = attempts_of(record)
    first = set(attempts[0].hosts) if attempts else {h.label for h in record.hosts}
    left_out = {
        label: f"{entry.get('reason', '?')} (left out at {_clock(entry.get('at'))}, not taken again before {_clock(entry.get('until'))})"
        for label, entry in record.left_out.items()
    }
    return Recovery(
        attempt=record.attempt,
        most=record.restarts + 1,
        watched=is_watched(record),
        doing=record.recovery,
        left_out=left_out,
        spares_in_use=tuple(h.label for h in record.hosts if h.label not in first),
        spares_left=tuple(h.label for h in record.spares),
        attempts=attempts,
    )


def _clock(epoch: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(epoch))) if isinstance(epoch, int | float) else "?"


NEXT_ATTEMPT_POLL_S = 0.5


async def next_attempt(record: JobRecord) -> JobRecord | None:
    """Once ``record``'s attempt has ended: the record of the next attempt when the watcher
    launched one; None when there will be none (the job was launched without ``--restarts``,
    or its watcher settled: the job ended, recovery gave up, or the watcher is gone)."""
    if not record.restarts:
        return None
    while True:
        current = load_record(record.name)
        if current.attempt > record.attempt:
            return current
        view = recovery_of(current)
        if view is None or view.settled:
            return None
        await asyncio.sleep(NEXT_ATTEMPT_POLL_S)


async def wait_through_attempts(record: JobRecord, wait: Callable[[JobRecord], Awaitable[None]]) -> JobRecord:
    """``wait(record)`` for each attempt in turn, until none follows; the last attempt's record."""
    while True:
        await wait(record)
        following = await next_attempt(record)
        if following is None:
            return load_record(record.name) if record.restarts else record
        record = following


def readmit(name: str, labels: Sequence[str]) -> JobRecord:
    """End the cooldown of hosts left out of job ``name`` (``launcher readmit``): its watcher
    may take them again at its next restart. UsageError for a host that is not left out."""
    record = load_record(name)
    unknown = [label for label in labels if label not in record.left_out]
    if unknown:
        out = ", ".join(record.left_out) or "none"
        raise UsageError(f"{', '.join(unknown)}: not left out of {name} (left out: {out})")
    left_out = {
        label: {**entry, "until": 0.0, "reason": f"{entry.get('reason')}; readmitted"} if label in labels else entry
        for label, entry in record.left_out.items()
    }
    return update_record(name, left_out=left_out)
