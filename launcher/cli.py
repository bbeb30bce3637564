"""The ``launcher`` command: parse options, call the library, show the result.

Exit codes: 0 success; 1 the job or a host failed; 2 bad usage or input; 130 Ctrl-C
during a launch (which is rolled back). Expected errors print one line, no traceback
(``--debug`` shows it).

Kept light: ``launcher --help`` imports neither asyncssh nor torch.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from launcher import __version__
from launcher.errors import LauncherError

if TYPE_CHECKING:
    from launcher.jobs import JobStatus, LogLine
    from launcher.records import JobRecord

T = TypeVar("T")

_HOSTS_HELP = "Hosts file (one host per line), or an inline list h1,h2:4, or 'localhost'."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="launcher")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Launch distributed PyTorch jobs on hosts you can SSH into: torchrun in tmux on every host."""
    ctx.obj = {"debug": debug}


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--hosts", "hosts_arg", metavar="FILE", help=_HOSTS_HELP + "  [default: localhost]")
@click.option("--name", help="Job name.  [default: SCRIPT stem + time]")
@click.option(
    "--nproc-per-node", metavar="N", help="Processes per host (or gpu/auto).  [default: the host's slots, else 1]"
)
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable for the job (repeatable).")
@click.option(
    "--rdzv-port", type=click.IntRange(1, 65535), help="Rendezvous port on the first host.  [default: a free one]"
)
@click.option("--python", metavar="PATH", help="Python on the hosts.  [default: this one]")
@click.option("--cwd", metavar="DIR", help="Working directory on the hosts.  [default: this one]")
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to connect to a host.",
)
@click.option(
    "--max-parallel", type=click.IntRange(min=1), default=128, show_default=True, help="SSH handshakes at once."
)
@click.option(
    "--runner",
    type=click.Choice(["torchrun", "python", "exec"]),
    default="torchrun",
    show_default=True,
    help="torchrun; python: SCRIPT once per host with MASTER_ADDR/MASTER_PORT/NODE_RANK/NNODES set; exec: SCRIPT is a command.",
)
@click.option("--nnodes", metavar="MIN:MAX", help="Elastic node range for torchrun.  [default: the number of hosts]")
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True, help="torchrun restarts.")
@click.option(
    "--torchrun-args", metavar="ARGS", help="More torchrun options, one string: --torchrun-args '--monitor-interval 1'."
)
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit 0 only if every host succeeded.")
@click.argument("script")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def launch(
    ctx: click.Context,
    hosts_arg: str | None,
    name: str | None,
    nproc_per_node: str | None,
    env: tuple[str, ...],
    rdzv_port: int | None,
    python: str | None,
    cwd: str | None,
    connect_timeout: float,
    max_parallel: int,
    runner: str,
    nnodes: str | None,
    max_restarts: int,
    torchrun_args: str | None,
    wait: bool,
    script: str,
    script_args: tuple[str, ...],
) -> None:
    """Start SCRIPT with torchrun on every host, each in a detached tmux session.

    Everything after SCRIPT goes to the script unchanged.
    """
    import os
    import shlex

    from launcher import commands, jobs
    from launcher.hosts import resolve_hosts
    from launcher.ssh import SshOptions

    spec = jobs.LaunchSpec(
        script=script,
        script_args=script_args,
        hosts=resolve_hosts(hosts_arg),
        name=name,
        nproc_per_node=nproc_per_node,
        env=dict(commands.parse_env_assignment(item) for item in env),
        python=python or sys.executable,
        cwd=cwd or os.getcwd(),
        rdzv_port=rdzv_port,
        runner=runner,  # type: ignore[arg-type]  # click.Choice checked it
        nnodes=nnodes,
        max_restarts=max_restarts,
        torchrun_args=tuple(shlex.split(torchrun_args or "")),
        ssh=SshOptions(connect_timeout=connect_timeout, max_parallel=max_parallel),
    )
    record = _run(jobs.launch_job(spec))
    hosts = ", ".join(h.label for h in record.hosts)
    click.echo(f"Launched {record.name} on {len(record.hosts)} host(s): {hosts}")
    click.echo(f"  rendezvous  {record.rdzv_endpoint}")
    click.echo(f"  logs        launcher logs --follow {record.name}")
    click.echo(f"  status      launcher status {record.name}")
    click.echo(f"  stop        launcher kill {record.name}")
    if wait:
        status = _run(_wait_for_end(record))
        _print_status(status)
        ctx.exit(0 if status.state == "succeeded" else 1)


async def _wait_for_end(record: JobRecord) -> JobStatus:
    from launcher import jobs

    while True:
        status = await jobs.job_status(record, _ssh_for(record))
        if status.state != "running":
            return status
        await asyncio.sleep(1.0)


@cli.command()
@click.argument("name", required=False)
@click.option("--hosts", "hosts_arg", metavar="FILE", help=_HOSTS_HELP + " Finds the job without a local record.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends (Ctrl-C detaches).")
@click.option("--rank", "ranks", type=click.IntRange(min=0), multiple=True, help="Only this global rank (repeatable).")
@click.pass_context
def logs(ctx: click.Context, name: str | None, hosts_arg: str | None, follow: bool, ranks: tuple[int, ...]) -> None:
    """Print the job's output from every host, each line labelled with host and global rank.

    NAME defaults to the last job launched from here.
    """
    from launcher import jobs

    record = _find_job(name, hosts_arg)
    wanted = set(ranks)

    def show(line: LogLine) -> None:
        if wanted and line.rank not in wanted:
            return
        label = f"[{line.host}]" if line.rank is None else f"[{line.host} rank {line.rank}]"
        sys.stdout.write(f"{label} {line.text}\n")

    def warn(host: str, problem: str) -> None:
        click.echo(f"launcher: {host}: {problem}", err=True)

    if not follow:
        lines, failures = _run(jobs.read_logs(record, _ssh_for(record)))
        for line in lines:
            show(line)
        for host, problem in failures.items():
            warn(host, problem)
        ctx.exit(1 if failures else 0)

    async def stream() -> None:
        async for line in jobs.follow_logs(record, _ssh_for(record), on_problem=warn):
            show(line)
            sys.stdout.flush()

    try:
        _run(stream())
    except KeyboardInterrupt:
        click.echo(f"\nlauncher: stopped following; {record.name} keeps running", err=True)


@cli.command()
@click.argument("name", required=False)
@click.option("--hosts", "hosts_arg", metavar="FILE", help=_HOSTS_HELP + " Finds the job without a local record.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, name: str | None, hosts_arg: str | None, as_json: bool) -> None:
    """Show per host whether the job runs and how it ended.

    Exit status 0 when the job is running or succeeded, 1 otherwise.
    """
    from launcher import jobs

    record = _find_job(name, hosts_arg)
    result = _run(jobs.job_status(record, _ssh_for(record)))
    if as_json:
        click.echo(json.dumps(status_json(result)))
    else:
        _print_status(result)
    ctx.exit(0 if result.state in ("running", "succeeded") else 1)


def status_json(result: JobStatus) -> dict[str, Any]:
    return {
        "name": result.name,
        "state": result.state,
        "hosts": [
            {"host": h.host, "state": h.state, "exit_code": h.exit_code, **({"error": h.error} if h.error else {})}
            for h in result.hosts
        ],
    }


def _print_status(result: JobStatus) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.name}: {result.state}", title_justify="left")
    for column in ("host", "state", "exit code", "note"):
        table.add_column(column)
    for h in result.hosts:
        table.add_row(h.host, h.state, "" if h.exit_code is None else str(h.exit_code), h.error or "")
    Console().print(table)


@cli.command()
@click.argument("name")
@click.option("--hosts", "hosts_arg", metavar="FILE", help=_HOSTS_HELP + " Finds the job without a local record.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL.",
)
@click.pass_context
def kill(ctx: click.Context, name: str, hosts_arg: str | None, grace: float) -> None:
    """End job NAME on every host: its tmux session and every process it started.

    Exit status 0 only when every host is verified clean.
    """
    from launcher import jobs

    record = _find_job(name, hosts_arg)
    results = _run(jobs.kill_job(record, grace, _ssh_for(record)))
    width = max(len(r.host) for r in results)
    for r in results:
        click.echo(f"{r.host:<{width}}  {'ok  ' if r.verified else 'FAIL'}  {r.message}")
    ctx.exit(0 if all(r.verified for r in results) else 1)


@cli.command(name="list")
def list_jobs() -> None:
    """Jobs launched from this machine, newest last."""
    import time

    from launcher.records import all_records

    for record in all_records():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.launched_at))
        hosts = ",".join(h.label for h in record.hosts)
        click.echo(f"{record.name}  {when}  {hosts}")


# ---------------------------------------------------------------------------- helpers


def _find_job(name: str | None, hosts_arg: str | None) -> JobRecord:
    from launcher import commands
    from launcher.errors import UsageError
    from launcher.hosts import resolve_hosts
    from launcher.records import JobRecord, latest_record, load_record

    if hosts_arg is not None:
        if name is None:
            raise UsageError("with --hosts, name the job: launcher <command> --hosts FILE NAME")
        return JobRecord(name=commands.check_job_name(name), hosts=resolve_hosts(hosts_arg), python=sys.executable)
    if name is None:
        return latest_record()
    return load_record(commands.check_job_name(name))


def _ssh_for(record: JobRecord) -> Any:
    from launcher.ssh import SshOptions

    return SshOptions(python=record.python or sys.executable)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one place turns errors into messages and exit codes."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=argv, prog_name="launcher", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except LauncherError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("Interrupted.", err=True)
        return 130
    return result if isinstance(result, int) else 0
