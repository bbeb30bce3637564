"""How a job ended (``Job.wait``): every host and rank, and the ``JobFailed`` a failure raises."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import JobFailed
from launcher.job.status import HostStatus, JobState, JobStatus, RankStatus, RootCause


@dataclass(frozen=True)
class JobResult:
    """A job once it ended: its state, how each host ended, and how each rank did.

    ``state`` is ``succeeded``, ``killed`` or (inside ``JobFailed.result``) ``failed`` or
    ``unknown``. ``hosts`` holds each host's ``HostStatus`` (state, exit code, its ranks);
    ``ranks`` maps each global rank to its ``RankStatus`` (state, exit code, signal).
    """

    name: str
    state: JobState
    hosts: tuple[HostStatus, ...]
    root_cause: RootCause | None = None
    """The first failure (host, rank, exception, traceback), when the job failed."""

    @property
    def ok(self) -> bool:
        """True when every host succeeded."""
        return self.state == "succeeded"

    @property
    def ranks(self) -> dict[int, RankStatus]:
        """Every global rank the hosts ran, in order."""
        found = {rank.rank: rank for host in self.hosts for rank in host.ranks}
        return dict(sorted(found.items()))

    def host_of(self, rank: int) -> str | None:
        """The label of the host that ran global rank ``rank``."""
        return next((h.host for h in self.hosts if any(r.rank == rank for r in h.ranks)), None)

    @classmethod
    def of(cls, status: JobStatus) -> JobResult:
        return cls(status.name, status.state, status.hosts, status.root_cause)


def job_failed(result: JobResult) -> JobFailed:
    """The error for a job that did not succeed, naming its root cause (or its worst host)."""
    root = result.root_cause
    if root is not None:
        return JobFailed(
            result.name, root.host, root.rank, root.exception, root.traceback, root.exit_code, root.signal, result
        )
    if result.state == "killed":
        return JobFailed(result.name, None, None, "the job was killed", result=result)
    for host in result.hosts:
        if host.state in ("failed", "unreachable", "unknown", "lost", "running"):
            what = f"{host.state}{f' ({host.error})' if host.error else ''}"
            if host.exit_code is not None:
                what += f", exit code {host.exit_code}"
            return JobFailed(result.name, host.host, None, what, exit_status=host.exit_code, result=result)
    return JobFailed(result.name, None, None, f"the job ended {result.state}", result=result)
