"""Errors a user of launcher can see.

Every expected failure is a ``LauncherError``; the CLI prints its message on one line
and exits non-zero without a traceback. Each child names what it is about::

    LauncherError
    ├── UsageError         bad arguments or options (exit 2)
    ├── HostsFileError     a hosts file or host spec, with file and line
    ├── JobNotFoundError   no record of a job by that name
    ├── HostError          one host failed: unreachable, refused, remote error
    └── JobError           several hosts failed (launch rolled back, kill unverified, ...)
"""

from __future__ import annotations


class LauncherError(Exception):
    """Base of every error launcher reports to its user."""

    exit_code = 1


class UsageError(LauncherError):
    """The command line asked for something that cannot be done."""

    exit_code = 2


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


class JobNotFoundError(LauncherError):
    """No local record of the job, and no ``--hosts`` to look it up with."""

    def __init__(self, name: str | None, message: str | None = None) -> None:
        self.name = name
        super().__init__(
            message or f"no job named {name!r} is known here (pass --hosts FILE to look it up on the hosts)"
        )


class HostError(LauncherError):
    """Something went wrong on or with one host."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.message = message
        super().__init__(f"{host}: {message}")


class JobError(LauncherError):
    """An operation failed on some hosts; ``failures`` maps host label to what went wrong."""

    def __init__(self, summary: str, failures: dict[str, str]) -> None:
        self.summary = summary
        self.failures = failures
        details = "; ".join(f"{host}: {why}" for host, why in failures.items())
        super().__init__(f"{summary} ({details})" if details else summary)
