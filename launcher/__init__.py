"""launcher: start distributed PyTorch jobs on hosts you can SSH into.

The Python API mirrors the command line::

    import asyncio
    from launcher import LaunchSpec, launch_job, resolve_hosts

    record = asyncio.run(launch_job(LaunchSpec("train.py", hosts=resolve_hosts("hosts"))))

Names are imported on first use so that ``launcher --help`` and the node agent stay
fast (no asyncssh, no torch at start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LaunchSpec": "launcher.launch",
    "JobStatus": "launcher.jobs",
    "HostStatus": "launcher.jobs",
    "HostKill": "launcher.jobs",
    "LogLine": "launcher.jobs",
    "launch_job": "launcher.launch",
    "job_status": "launcher.jobs",
    "kill_job": "launcher.jobs",
    "read_logs": "launcher.jobs",
    "follow_logs": "launcher.jobs",
    "JobRecord": "launcher.records",
    "load_record": "launcher.records",
    "latest_record": "launcher.records",
    "Host": "launcher.hosts",
    "resolve_hosts": "launcher.hosts",
    "parse_hosts_file": "launcher.hosts",
    "SshOptions": "launcher.ssh",
    "LauncherError": "launcher.errors",
    "HostsFileError": "launcher.errors",
    "HostError": "launcher.errors",
    "JobError": "launcher.errors",
    "JobNotFoundError": "launcher.errors",
    "UsageError": "launcher.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")
