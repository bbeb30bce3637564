"""Errors a user of launcher can see, typed by kind so that callers branch on the type.

Every expected failure is a ``LauncherError``; the CLI prints its message on one line
and exits non-zero without a traceback. Each one carries the facts it is about::

    LauncherError
    ├── UsageError              bad arguments or options (exit 2)
    │   └── NotPicklableError       run()/submit(): a function or argument cannot be pickled: what
    ├── HostsFileError          a hosts file or host spec: source, line
    ├── JobNotFoundError        no record of a job by that name: name
    ├── SlurmError              sbatch/scancel refused, or a batch job did not start: job_id
    ├── HostError               one host failed: host, message
    │   ├── UnreachableError        cannot connect (refused, timed out, unknown name)
    │   ├── AuthenticationError     the host refused our keys
    │   ├── HostKeyError            the host key is unknown or changed
    │   ├── ConnectionLostError     the connection dropped during an operation
    │   ├── AgentError              the node agent cannot run or does not answer
    │   │   └── VersionMismatchError   the node runs another launcher: node_version, local_version
    │   ├── RendezvousUnreachableError  it cannot connect to the first host's rendezvous
    │   └── NodeRefusedError        the node refused the request: kind
    │       ├── JobRunningError         a job of that name already runs there
    │       ├── WorkdirMissingError     the working directory is not there
    │       ├── ScriptMissingError      the script is not in the working directory there
    │       ├── TmuxMissingError        tmux is not installed there
    │       ├── StartFailedError        the job's command or session could not start
    │       ├── GpusBusyError           a GPU it would use is held by another program or job
    │       ├── NoGpusError             --nproc-per-node gpu on a host without GPUs
    │       ├── PortBusyError           the rendezvous port is taken on the first host
    │       └── SyncFailedError         a sync could not stage or commit there (disk full, in the way)
    ├── JobError                several hosts failed: summary, errors (host -> HostError)
    ├── JobFailed               a job ended failed (``Job.wait``, ``run``): job, host, rank,
    │                           exception, traceback, exit_status, signal, result
    └── JobTimeoutError         ``wait(timeout)`` ran out (also a TimeoutError): job, timeout
"""

from __future__ import annotations

from typing import Any


class LauncherError(Exception):
    """Base of every error launcher reports to its user."""

    exit_code = 1


def message_of(exc: BaseException) -> str:
    """What went wrong, without the host label a HostError's text starts with."""
    return exc.message if isinstance(exc, HostError) else str(exc)


class UsageError(LauncherError):
    """The command line (or the call) asked for something that cannot be done."""

    exit_code = 2


class NotPicklableError(UsageError):
    """``run``/``submit``: the function or an argument cannot be pickled; ``what`` names it."""

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"cannot pickle {what}: {reason}")


class HostsFileError(LauncherError):
    """A hosts file (or inline host list) is missing or malformed.

    ``source`` is the file path (or ``--hosts`` for an inline list) and ``line`` the
    1-based line number, or None when the problem is not on one line.
    """

    exit_code = 2

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {message}")


class SlurmError(LauncherError):
    """SLURM refused or failed: no sbatch on PATH, a job that did not start, scancel refused.

    ``job_id`` is the SLURM job it is about, when there is one.
    """

    def __init__(self, message: str, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message)


class JobNotFoundError(LauncherError):
    """No record of the job, and no hosts to look it up on."""

    def __init__(self, name: str | None, message: str | None = None) -> None:
        self.name = name
        super().__init__(
            message or f"no job named {name!r} is known here (pass --hosts FILE to look it up on the hosts)"
        )


class HostError(LauncherError):
    """Something went wrong on or with one host: ``host`` (its label) and ``message``."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.message = message
        super().__init__(f"{host}: {message}")


class UnreachableError(HostError):
    """No SSH connection could be made: refused, timed out, unknown host name."""


class AuthenticationError(HostError):
    """The host refused every key and method we offered."""


class HostKeyError(HostError):
    """The host's key is not in known_hosts, or it changed: never trusted silently."""


class ConnectionLostError(HostError):
    """The connection dropped while an operation was under way."""


class AgentError(HostError):
    """The node agent could not run there (no python, launcher not installed) or stopped answering."""


class VersionMismatchError(AgentError):
    """The node runs another launcher version (or protocol) than this machine."""

    def __init__(
        self, host: str, node_version: str, local_version: str, node_protocol: int, local_protocol: int
    ) -> None:
        self.node_version = node_version
        self.local_version = local_version
        self.node_protocol = node_protocol
        self.local_protocol = local_protocol
        if node_version == local_version:
            what = f"protocol {node_protocol}, this machine protocol {local_protocol}"
        else:
            what = f"{node_version}, this machine {local_version}"
        super().__init__(host, f"runs launcher {what}: install the same version on every node")


class NodeRefusedError(HostError):
    """The node refused the request; ``kind`` says why (``protocol.RefusalKind``)."""

    kind = "internal"


class JobRunningError(NodeRefusedError):
    """A job of that name already runs on the host (``--force`` replaces it)."""

    kind = "job_running"


class WorkdirMissingError(NodeRefusedError):
    """The working directory does not exist on the host (sync the code, or pass ``--cwd``)."""

    kind = "workdir_missing"


class ScriptMissingError(NodeRefusedError):
    """The script is not in the working directory on the host."""

    kind = "script_missing"


class TmuxMissingError(NodeRefusedError):
    """tmux is not installed on the host."""

    kind = "tmux_missing"


class StartFailedError(NodeRefusedError):
    """The job's command or its tmux session could not start on the host."""

    kind = "start_failed"


class GpusBusyError(NodeRefusedError):
    """A GPU the job would use is held by another program or another launcher job (``--allow-busy-gpus``)."""

    kind = "gpus_busy"


class NoGpusError(NodeRefusedError):
    """``--nproc-per-node gpu`` on a host without GPUs."""

    kind = "no_gpus"


class PortBusyError(NodeRefusedError):
    """The first host cannot listen on the rendezvous port (``--rdzv-port`` in use)."""

    kind = "port_busy"


class SyncFailedError(NodeRefusedError):
    """A sync could not stage or commit a file there; the message names the file."""

    kind = "sync_failed"


class RendezvousUnreachableError(HostError):
    """The host cannot open a TCP connection to the first host's rendezvous: a firewall,
    or an address it has no route to. Found before anything starts."""


REFUSALS: dict[str, type[NodeRefusedError]] = {
    cls.kind: cls
    for cls in (
        NodeRefusedError,
        JobRunningError,
        WorkdirMissingError,
        ScriptMissingError,
        TmuxMissingError,
        StartFailedError,
        GpusBusyError,
        NoGpusError,
        PortBusyError,
        SyncFailedError,
    )
}
"""The error class for each kind of refusal a node answers with."""


class JobError(LauncherError):
    """An operation failed on some hosts; ``errors`` maps each host's label to its error."""

    def __init__(self, summary: str, errors: dict[str, HostError]) -> None:
        self.summary = summary
        self.errors = errors
        details = "; ".join(f"{host}: {exc.message}" for host, exc in errors.items())
        super().__init__(f"{summary} ({details})" if details else summary)

    @property
    def failures(self) -> dict[str, str]:
        """What went wrong per host, as text."""
        return {host: exc.message for host, exc in self.errors.items()}


class JobFailed(LauncherError):
    """The job ended failed; the fields name its first failure (the root cause).

    ``host`` and ``rank`` say where (``rank`` None: the node's own command failed),
    ``exception`` the exception text (``ValueError: boom``), ``traceback`` the remote
    traceback's lines, ``result`` the ``JobResult`` (every host and rank; typed ``Any`` so that the
    error tree imports nothing: ``job/result.py`` builds the error from the outcome). The message
    is one line; the remote traceback is added as a note, so Python shows it under ours.
    """

    def __init__(
        self,
        job: str,
        host: str | None,
        rank: int | None,
        exception: str,
        traceback: tuple[str, ...] = (),
        exit_status: int | None = None,
        signal: str | None = None,
        result: Any = None,
    ) -> None:
        self.job = job
        self.host = host
        self.rank = rank
        self.exception = exception
        self.traceback = traceback
        self.exit_status = exit_status
        """The failed process's exit code (``exit_code`` is the CLI's, as for every error)."""
        self.signal = signal
        self.result = result
        where = " ".join(part for part in (host, None if rank is None else f"rank {rank}") if part)
        super().__init__(f"job {job} failed: {where + ': ' if where else ''}{exception}")
        if traceback:
            self.add_note(f"remote traceback ({where or job}):\n" + "\n".join(line.rstrip("\n") for line in traceback))


class JobTimeoutError(LauncherError, TimeoutError):
    """``wait(timeout)`` or ``result(timeout)`` ran out before the job ended; it keeps running."""

    def __init__(self, job: str, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        super().__init__(f"job {job} still runs after {timeout:g} s (it keeps running; kill() stops it)")
