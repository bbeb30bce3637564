"""``Job``: a launched job, driven with plain blocking calls (``launcher.launch`` returns one).

Each method runs the async library on a private event loop (``loop.py``), so it works
the same in a script and inside a running loop (a Jupyter cell), and leaves no thread,
loop or connection behind once it returns. Async callers use ``launch_job``,
``job_status``, ``wait_for_end``, ``follow_logs`` and ``kill_job`` directly.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from launcher.api.call_function import RankOutcome, read_outcomes, values_or_raise
from launcher.api.loop import iterate_sync, run_sync
from launcher.errors import JobError, JobTimeoutError, UnreachableError, UsageError
from launcher.job.kill import HostKill, kill_job
from launcher.job.logs import LogLine, follow_logs, read_logs
from launcher.job.records import JobRecord, all_records, load_record
from launcher.job.result import JobResult, job_failed
from launcher.job.stack import RollCall, take_stacks
from launcher.job.status import JobStatus, job_status, wait_for_end
from launcher.job.watcher import Attempt, attempts_of, wait_through_attempts
from launcher.protocol.base import CALL_MODULE
from launcher.transport.agent import NodeAgent, SshOptions

_KEEPALIVE_S = 5.0
"""While waiting or following: three missed keepalives and a host counts as cut off."""


@dataclass(frozen=True)
class Job:
    """A job launched on some hosts: ask how it stands, read its logs, wait for it, kill it.

    ``Job.get(name)`` finds a job launched from this machine; ``launcher.jobs()`` lists them.
    """

    record: JobRecord
    """The local record of the job (hosts, python, cwd, rendezvous)."""
    ssh: SshOptions = field(default_factory=SshOptions)
    """How its hosts are reached."""

    @classmethod
    def get(cls, name: str) -> Job:
        """The job launched from here under ``name``; JobNotFoundError if there is none."""
        record = load_record(name)
        return cls(record, SshOptions(python=record.python or sys.executable))

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def hosts(self) -> tuple[str, ...]:
        """The hosts' labels, as the hosts file or list gave them; the first ran the rendezvous."""
        return tuple(host.label for host in self.record.hosts)

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Its attempts so far, first to last, for a job launched with ``restarts=``: the hosts
        each ran on, and how and why it ended. Empty for a job launched without restarts."""
        return attempts_of(self._current())

    @property
    def is_function(self) -> bool:
        """True for a job of ``launcher.submit``/``run``: ``result()`` brings its return values."""
        return self.record.script == CALL_MODULE

    def status(self) -> JobStatus:
        """How the job stands on every host now (a host that cannot be asked is ``unreachable``)."""
        return run_sync(job_status(self._current(), self.ssh))

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job has ended on every host; how it ended, per host and rank.

        Returns for ``succeeded`` and ``killed``; raises JobFailed naming the root cause
        (host, rank, exception, traceback) otherwise, and JobTimeoutError after ``timeout``
        seconds (the job keeps running). It holds one idle connection per host, which the
        node answers when the job ends there.
        """
        result = JobResult.of(run_sync(self._ended(timeout)))
        if result.state in ("succeeded", "killed"):
            return result
        raise job_failed(result)

    def result(self, timeout: float | None = None) -> dict[int, Any]:
        """A function job's return values by global rank, once it ended (submitit's ``result()``).

        Raises JobFailed naming the host and rank that raised, with its remote traceback,
        JobTimeoutError after ``timeout`` seconds, and UsageError for a job of a script.
        """
        if not self.is_function:
            raise UsageError(f"job {self.name} runs a script, not a function: use wait() (result() is for submit())")

        outcomes: dict[int, RankOutcome] = {}
        read_from: set[str] = set()

        async def collect(agent: NodeAgent) -> None:  # on the connection that saw the end
            outcomes.update(await read_outcomes(agent, self.name))
            read_from.add(agent.host.label)

        async def ended_and_collected() -> JobStatus:
            await self._wait_for_end(timeout, then=collect)
            return await job_status(self.record, self.ssh)

        status = run_sync(ended_and_collected())
        unreadable = {h: "it could not be reached" for h in self.hosts if h not in read_from}
        return values_or_raise(JobResult.of(status), outcomes, unreadable)

    def logs(
        self,
        follow: bool = False,
        rank: int | Sequence[int] | None = None,
        host: str | None = None,
        *,
        tail: int | None = None,
        stderr_only: bool = False,
    ) -> Iterator[LogLine]:
        """What the job printed, as ``LogLine``s (host, rank, stream, text, time).

        ``follow``: lines as they come, until the job has ended on every host (a dropped
        connection is resumed where it stopped). ``rank``/``host``/``tail``/``stderr_only``
        filter on the nodes, as ``launcher logs`` does. Without ``follow``, a host that
        cannot be read is a warning (all of them: JobError).
        """
        record = replace(self, record=self._current())._on_host(host)
        filters: dict[str, Any] = {
            "tail": tail,
            "ranks": [rank] if isinstance(rank, int) else list(rank or ()),
            "stderr_only": stderr_only,
        }
        if follow:
            ssh = replace(self.ssh, keepalive=_KEEPALIVE_S)
            return iterate_sync(lambda: follow_logs(record, ssh, **filters))
        lines, failures = run_sync(read_logs(record, self.ssh, **filters))
        if failures and len(failures) == len(record.hosts):
            raise JobError(
                f"cannot read the logs of {self.name}", {h: UnreachableError(h, m) for h, m in failures.items()}
            )
        for label, message in failures.items():
            warnings.warn(f"{label}: cannot read its logs: {message}", RuntimeWarning, stacklevel=2)
        return iter(lines)

    def stacks(self, native: bool = False, ranks: Sequence[int] = ()) -> RollCall:
        """Where every rank is now (``launcher stack``): ranks grouped by their innermost frame
        in user code, the largest group first; full stacks saved on each host."""
        return run_sync(take_stacks(self.record, self.ssh, native=native, ranks=ranks))

    def kill(self, grace: float = 10.0) -> list[HostKill]:
        """End the job on every host (SIGTERM, ``grace`` s, SIGKILL), each host verified clean."""
        return run_sync(kill_job(self.record, grace, self.ssh))

    async def _ended(self, timeout: float | None) -> JobStatus:
        await self._wait_for_end(timeout)
        return await job_status(self._current(), self.ssh)

    async def _wait_for_end(
        self, timeout: float | None, then: Callable[[NodeAgent], Awaitable[None]] | None = None
    ) -> None:
        """Until the job has ended everywhere (launched with ``restarts=``: until no attempt follows)."""
        ssh = replace(self.ssh, keepalive=_KEEPALIVE_S)

        async def one(attempt: JobRecord) -> None:
            await wait_for_end(attempt, ssh, then=then)

        try:
            async with asyncio.timeout(timeout):
                await wait_through_attempts(self._current(), one)
        except TimeoutError:
            raise JobTimeoutError(self.name, timeout or 0.0) from None

    def _current(self) -> JobRecord:
        """The record as it is now: a job launched with ``restarts=`` moves between hosts."""
        return load_record(self.name) if self.record.restarts else self.record

    def _on_host(self, host: str | None) -> JobRecord:
        if host is None:
            return self.record
        chosen = tuple(h for h in self.record.hosts if host in (h.label, h.name))
        if not chosen:
            raise UsageError(f"{host!r} is not a host of {self.name} (its hosts: {', '.join(self.hosts)})")
        return replace(self.record, hosts=chosen)


def jobs() -> list[Job]:
    """Every job launched from this machine whose record is readable, oldest first."""
    return [Job(record, SshOptions(python=record.python or sys.executable)) for record in all_records()]
