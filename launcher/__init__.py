"""launcher: start distributed PyTorch jobs on hosts you can SSH into.

The Python API does what the command line does, through the same code::

    import launcher

    job = launcher.launch("train.py", hosts="hosts", nproc_per_node=4)
    result = job.wait()                      # JobFailed names the failed host and rank
    values = launcher.run(fn, hosts="hosts")  # {global rank: fn()'s return value}

Async callers use the coroutines (``launch_job``, ``job_status``, ``wait_for_end``...).

Every public name is listed in ``__all__`` and re-exported here. They are imported on
first use (PEP 562), not eagerly: ``launcher --help`` must stay fast, and every node
agent (``python -m launcher.node``) imports this package first, so it must not pull in
the launching side. Type checkers see the explicit imports below.

The packages (who may import whom: ``.importlinter``):

    cli/            the ``launcher`` command (click and rich only)
    api/            the blocking API: launch, run, submit, Job
    doctor/         ``launcher doctor``: the checks, the bandwidth test
    bandwidth_job.py  the bandwidth test's job on each host (imports torch, only the wire of launcher)
    launching/      what to launch, what each host runs, the launch itself
    job/            a launched job: record, status, logs, kill, how it ended
    sync/           ``launcher sync``
    transport/      SSH connections, the node agent's client, the fan-out
    hosts/          which hosts (pure)
    run_context.py  ``launcher.context()`` (with visible_gpus.py)
    errors.py       every error, typed
    _version.py     the version both sides compare
    protocol/       the wire and the state directories (standard library only)
    node/           what runs on each node (imports only ``protocol/`` and ``_version.py``)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from launcher._version import __version__

if TYPE_CHECKING:
    from launcher.api.blocking import launch, run, submit
    from launcher.api.job import Job, jobs
    from launcher.errors import (
        AgentError,
        AuthenticationError,
        ConnectionLostError,
        HostError,
        HostKeyError,
        HostsFileError,
        JobError,
        JobFailed,
        JobNotFoundError,
        JobRunningError,
        JobTimeoutError,
        LauncherError,
        NodeRefusedError,
        NotPicklableError,
        ScriptMissingError,
        StartFailedError,
        TmuxMissingError,
        UnreachableError,
        UsageError,
        VersionMismatchError,
        WorkdirMissingError,
    )
    from launcher.hosts.files import Host, parse_hosts_file
    from launcher.hosts.sources import resolve_hosts
    from launcher.job.kill import HostKill, kill_all_jobs, kill_job
    from launcher.job.logs import LogLine, follow_logs, read_logs
    from launcher.job.records import JobRecord, all_records, latest_record, load_record
    from launcher.job.result import JobResult
    from launcher.job.status import HostStatus, JobStatus, RankStatus, RootCause, job_status, wait_for_end
    from launcher.launching.plan import NodePlan
    from launcher.launching.spec import LaunchSpec, make_spec
    from launcher.launching.start import dry_run, launch_job
    from launcher.run_context import ContextError, RunContext, context
    from launcher.transport.agent import SshOptions

_EXPORTS = {
    "LaunchSpec": "launcher.launching.spec",
    "make_spec": "launcher.launching.spec",
    "NodePlan": "launcher.launching.plan",
    "launch_job": "launcher.launching.start",
    "dry_run": "launcher.launching.start",
    "JobStatus": "launcher.job.status",
    "HostStatus": "launcher.job.status",
    "RankStatus": "launcher.job.status",
    "RootCause": "launcher.job.status",
    "job_status": "launcher.job.status",
    "wait_for_end": "launcher.job.status",
    "HostKill": "launcher.job.kill",
    "kill_job": "launcher.job.kill",
    "kill_all_jobs": "launcher.job.kill",
    "LogLine": "launcher.job.logs",
    "read_logs": "launcher.job.logs",
    "follow_logs": "launcher.job.logs",
    "JobRecord": "launcher.job.records",
    "load_record": "launcher.job.records",
    "latest_record": "launcher.job.records",
    "all_records": "launcher.job.records",
    "Host": "launcher.hosts.files",
    "parse_hosts_file": "launcher.hosts.files",
    "resolve_hosts": "launcher.hosts.sources",
    "SshOptions": "launcher.transport.agent",
    "RunContext": "launcher.run_context",
    "ContextError": "launcher.run_context",
    "context": "launcher.run_context",
    "LauncherError": "launcher.errors",
    "UsageError": "launcher.errors",
    "HostsFileError": "launcher.errors",
    "JobNotFoundError": "launcher.errors",
    "HostError": "launcher.errors",
    "UnreachableError": "launcher.errors",
    "AuthenticationError": "launcher.errors",
    "HostKeyError": "launcher.errors",
    "ConnectionLostError": "launcher.errors",
    "AgentError": "launcher.errors",
    "VersionMismatchError": "launcher.errors",
    "NodeRefusedError": "launcher.errors",
    "JobRunningError": "launcher.errors",
    "WorkdirMissingError": "launcher.errors",
    "ScriptMissingError": "launcher.errors",
    "TmuxMissingError": "launcher.errors",
    "StartFailedError": "launcher.errors",
    "JobError": "launcher.errors",
    "JobFailed": "launcher.errors",
    "JobTimeoutError": "launcher.errors",
    "NotPicklableError": "launcher.errors",
    "launch": "launcher.api.blocking",
    "run": "launcher.api.blocking",
    "submit": "launcher.api.blocking",
    "Job": "launcher.api.job",
    "jobs": "launcher.api.job",
    "JobResult": "launcher.job.result",
}

__all__ = [
    "AgentError",
    "AuthenticationError",
    "ConnectionLostError",
    "ContextError",
    "Host",
    "HostError",
    "HostKeyError",
    "HostKill",
    "HostStatus",
    "HostsFileError",
    "Job",
    "JobError",
    "JobFailed",
    "JobNotFoundError",
    "JobRecord",
    "JobResult",
    "JobRunningError",
    "JobStatus",
    "JobTimeoutError",
    "LaunchSpec",
    "LauncherError",
    "LogLine",
    "NodePlan",
    "NodeRefusedError",
    "NotPicklableError",
    "RankStatus",
    "RootCause",
    "RunContext",
    "ScriptMissingError",
    "SshOptions",
    "StartFailedError",
    "TmuxMissingError",
    "UnreachableError",
    "UsageError",
    "VersionMismatchError",
    "WorkdirMissingError",
    "__version__",
    "all_records",
    "context",
    "dry_run",
    "follow_logs",
    "job_status",
    "jobs",
    "kill_all_jobs",
    "kill_job",
    "latest_record",
    "launch",
    "launch_job",
    "load_record",
    "make_spec",
    "parse_hosts_file",
    "read_logs",
    "resolve_hosts",
    "run",
    "submit",
    "wait_for_end",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
