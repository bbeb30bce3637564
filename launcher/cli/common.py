"""What the CLI's commands share: options, finding a job, running the library, messages."""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from launcher.job.records import JobRecord
    from launcher.transport.agent import SshOptions

T = TypeVar("T")

HOSTS_HELP = "Hosts file (one host per line), or an inline list h1,h2:4, or 'localhost'."
find_by_hosts = click.option(
    "--hosts", "hosts_arg", metavar="FILE", help=HOSTS_HELP + " Finds the job without a local record."
)
connect_timeout = click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds for the TCP connection to a host (tried twice); a live host is waited for.",
)
as_json = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
only_ranks = click.option(
    "--rank", "ranks", type=click.IntRange(min=0), multiple=True, help="Only this global rank (repeatable)."
)
only_hosts = click.option(
    "--host", "only_hosts", multiple=True, metavar="HOST", help="Only this host, as labelled (repeatable)."
)
max_parallel = click.option(
    "--max-parallel", type=click.IntRange(min=1), default=128, show_default=True, help="SSH handshakes at once."
)


def run(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio  # here: importing it costs ``launcher --help`` ~25 ms

    return asyncio.run(coro)


def warn(host: str, problem: str) -> None:
    click.echo(f"launcher: {host}: {problem}", err=True)


def command_name() -> str:
    """How to type ``launcher`` on this machine, for the commands the CLI prints.

    A pip install into a pyenv interpreter makes no shim until ``pyenv rehash``, so
    ``launcher`` may not be on PATH even though ``python3 -m launcher`` works.
    """
    if shutil.which("launcher"):
        return "launcher"
    python = "python3" if shutil.which("python3") else shlex.quote(sys.executable)
    return f"{python} -m launcher"


def find_job(name: str | None, hosts_arg: str | None) -> JobRecord:
    """The job named, from ``--hosts`` or the local record; the last launched one by default."""
    from launcher.errors import UsageError
    from launcher.hosts.sources import resolve_hosts
    from launcher.job.records import JobRecord, latest_record, load_record
    from launcher.launching import commands

    if hosts_arg is not None:
        if name is None:
            raise UsageError("with --hosts, name the job: launcher <command> --hosts FILE NAME")
        return JobRecord(name=commands.check_job_name(name), hosts=resolve_hosts(hosts_arg), python=sys.executable)
    if name is None:
        return latest_record()
    return load_record(commands.check_job_name(name))


def ssh_for(record: JobRecord | None) -> SshOptions:
    from launcher.transport.agent import SshOptions

    return SshOptions(python=(record.python if record else None) or sys.executable)
