"""``launcher logs``, ``status``, ``kill``, ``attach`` and ``list``: find the job, ask the library, show."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import click

from launcher.cli import render, syncing
from launcher.cli.common import (
    as_json,
    connect_timeout,
    find_by_hosts,
    find_job,
    max_parallel,
    only_hosts,
    only_ranks,
    run,
    ssh_for,
    warn,
)
from launcher.cli.launching import follow
from launcher.cli.stack import roll_call_lines


@click.command()
@click.argument("name", required=False)
@find_by_hosts
@click.option(
    "-f", "--follow", "following", is_flag=True, help="Keep printing new lines until the job ends (Ctrl-C detaches)."
)
@only_ranks
@only_hosts
@click.option(
    "--tail",
    type=click.IntRange(min=0),
    metavar="N",
    help="Only the last N lines of each rank (with -f: then follow on).",
)
@click.option("--stderr", "stderr_only", is_flag=True, help="Only what ranks wrote to stderr.")
@click.option("--no-prefix", is_flag=True, help="Print lines without the [host rank] label.")
@click.option(
    "--keepalive",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="With -f: seconds between SSH keepalives; 3 missed mean the host is cut off, and it reconnects.",
)
@max_parallel
@click.pass_context
def logs(ctx: click.Context, /, name: str | None, hosts_arg: str | None, following: bool, **options: Any) -> None:
    """Print the job's output from every host, each line labelled with host and global rank.

    NAME defaults to the last job launched from here. With --follow it ends by itself
    when the job has ended on every host.
    """
    from launcher.job.logs import merged_logs, read_logs

    record = find_job(name, hosts_arg)
    if options["only_hosts"]:
        unknown = set(options["only_hosts"]) - {h.label for h in record.hosts}
        if unknown:
            raise click.BadParameter(f"not a host of {record.name}: {', '.join(sorted(unknown))}", param_hint="--host")
        record = replace(record, hosts=tuple(h for h in record.hosts if h.label in options["only_hosts"]))
    show = render.LinePrinter(set(options["ranks"]), options["stderr_only"], options["no_prefix"])
    filters = {"tail": options["tail"], "ranks": options["ranks"], "stderr_only": options["stderr_only"]}
    if not following:
        ssh = replace(ssh_for(record), max_parallel=options["max_parallel"])
        failures: dict[str, str] = {}
        if options["tail"] is None:  # printed as it comes, merged by time: no need to hold it all

            async def stream() -> None:
                async for line in merged_logs(
                    record, ssh, failures, ranks=options["ranks"], stderr_only=filters["stderr_only"]
                ):
                    show(line)

            run(stream())
        else:
            lines, failures = run(read_logs(record, ssh, **filters))
            for line in lines:
                show(line)
        for host, problem in failures.items():
            warn(host, problem)
        ctx.exit(1 if failures else 0)
    status = follow(record, show, keepalive=options["keepalive"], max_parallel=options["max_parallel"], **filters)
    if status is not None and status.root_cause is not None:
        from rich.console import Console

        render.print_root_cause(Console(stderr=True, highlight=False), status.root_cause)


@click.command()
@click.argument("name", required=False)
@find_by_hosts
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to reach a host (tried once: status is read-only).",
)
@max_parallel
@as_json
@click.pass_context
def status(
    ctx: click.Context,
    name: str | None,
    hosts_arg: str | None,
    connect_timeout: float,
    max_parallel: int,
    as_json: bool,
) -> None:
    """Show per host whether the job runs and how it ended.

    Exit status 0 when the job is running or succeeded and every host answered, 1 otherwise
    (a host unreachable or lost too).
    """
    from launcher.job.status import job_status, silent_ranks
    from launcher.job.watcher import recovery_of

    record = find_job(name, hosts_arg)
    ssh = replace(ssh_for(record), connect_timeout=connect_timeout, max_parallel=max_parallel, retries=0)
    result = run(job_status(record, ssh))
    hang = asdict(result.hang) if result.hang is not None else None
    recovery = recovery_of(record)
    if as_json:
        more = {"hang": hang, "recovery": asdict(recovery) if recovery else None, **syncing.code_json(record)}
        click.echo(json.dumps({**render.status_json(result), **more}))
    else:
        render.print_status(result)
        if recovery is not None:
            for line in render.recovery_lines(recovery):
                click.echo(line)
        if result.root_cause is not None and result.root_cause.same_on:
            click.echo(f"  same on ranks {', '.join(str(rank) for rank in result.root_cause.same_on)}")
        for host, rank, silent, peers in silent_ranks(result, time.time()):
            click.echo(f"Silent: rank {rank} on {host} last printed {silent:.0f} s ago (its peers: {peers:.0f} s)")
        if result.hang is not None:
            click.echo("Hung: no rank printed for the --hang-timeout; where the ranks were:")
            for line in roll_call_lines(result.hang):
                click.echo(f"  {line}")
        syncing.print_code(record)
    answered = all(h.state not in ("unreachable", "lost") for h in result.hosts)
    ctx.exit(0 if answered and result.state in ("running", "succeeded") else 1)


@click.command()
@click.argument("name", required=False)
@click.option(
    "--all",
    "kill_all",
    is_flag=True,
    help="Every launcher job on the hosts (of --hosts, else of every job launched from here).",
)
@find_by_hosts
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL.",
)
@connect_timeout
@max_parallel
@as_json
@click.pass_context
def kill(
    ctx: click.Context,
    /,
    name: str | None,
    kill_all: bool,
    hosts_arg: str | None,
    grace: float,
    connect_timeout: float,
    max_parallel: int,
    as_json: bool,
) -> None:
    """End job NAME on every host: its tmux session and every process it started.

    Exit status 0 only when every host is verified clean; an unreachable host is
    reported and the others are still cleaned.
    """
    from launcher.errors import UsageError
    from launcher.job import kill as killing

    if kill_all == (name is not None):
        raise UsageError("name one job, or pass --all")
    if kill_all:
        ssh = replace(ssh_for(None), connect_timeout=connect_timeout, max_parallel=max_parallel)
        results = run(killing.kill_all_jobs(_all_known_hosts(hosts_arg), grace, ssh))
    else:
        record = find_job(name, hosts_arg)
        ssh = replace(ssh_for(record), connect_timeout=connect_timeout, max_parallel=max_parallel)
        results = run(killing.kill_job(record, grace, ssh))
    verified = all(r.verified for r in results)
    if as_json:
        click.echo(json.dumps({"name": name, "verified": verified, "hosts": [asdict(r) for r in results]}))
    else:
        width = max(len(r.host) for r in results)
        for r in results:
            click.echo(f"{r.host:<{width}}  {'ok  ' if r.verified else 'FAIL'}  {r.message}")
    ctx.exit(0 if verified else 1)


def _all_known_hosts(hosts_arg: str | None) -> tuple[Any, ...]:
    from launcher.errors import UsageError
    from launcher.hosts.sources import resolve_hosts
    from launcher.job.records import all_records

    if hosts_arg is not None:
        return resolve_hosts(hosts_arg)
    unique = {h.label: h for record in all_records() for h in record.hosts}
    if not unique:
        raise UsageError("no job has been launched from here: pass --hosts FILE")
    return tuple(unique.values())


@click.command()
@click.argument("name")
@click.argument("hosts", nargs=-1, required=True)
def readmit(name: str, hosts: tuple[str, ...]) -> None:
    """Let job NAME's watcher (launch --restarts) take HOSTS again, before their cooldown ends."""
    from launcher.job.watcher import readmit as readmit_hosts

    readmit_hosts(name, hosts)
    click.echo(f"{', '.join(hosts)}: may be taken again at the next restart of {name}")


@click.command()
@click.argument("name", required=False)
@click.option("--host", "host_label", metavar="HOST", help="Which host's session.  [default: the first]")
@find_by_hosts
@click.option("--rw", is_flag=True, help="Allow typing into the session (default: read-only).")
def attach(name: str | None, host_label: str | None, hosts_arg: str | None, rw: bool) -> None:
    """Open the job's tmux session on a host (over ssh -t); detach with Ctrl-b d."""
    import os

    from launcher.launching import commands

    record = find_job(name, hosts_arg)
    hosts = [h for h in record.hosts if host_label in (None, h.label)]
    if not hosts:
        raise click.BadParameter(f"not a host of {record.name}: {host_label}", param_hint="--host")
    host = hosts[0]
    argv = commands.attach_argv(host.name, host.user, host.port, host.is_local, record.name, read_only=not rw)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]}: {exc.strerror}") from None


@click.command(name="list")
@as_json
def list_jobs(as_json: bool) -> None:
    """Jobs launched from this machine, newest last, with their last known state (no host is asked)."""
    from launcher.job.records import all_records

    records = all_records()
    if as_json:
        jobs = [
            {
                "name": r.name,
                "launched_at": r.launched_at,
                "last_state": r.last_state or "launched",
                "hosts": [h.label for h in r.hosts],
            }
            for r in records
        ]
        click.echo(json.dumps({"jobs": jobs}))
    elif records:
        render.print_jobs(records)
    sys.stdout.flush()
