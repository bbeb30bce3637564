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
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from launcher import __version__, render
from launcher.errors import LauncherError

if TYPE_CHECKING:
    from launcher.jobs import JobStatus
    from launcher.records import JobRecord

T = TypeVar("T")

_HOSTS_HELP = "Hosts file (one host per line), or an inline list h1,h2:4, or 'localhost'."
_find_by_hosts = click.option(
    "--hosts", "hosts_arg", metavar="FILE", help=_HOSTS_HELP + " Finds the job without a local record."
)

_connect_timeout = click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to reach a host (tried twice).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="launcher")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Launch distributed PyTorch jobs on hosts you can SSH into: torchrun in tmux on every host."""
    ctx.obj = {"debug": debug}


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--hosts", "hosts_arg", metavar="FILE", help=_HOSTS_HELP + "  [default: localhost]")
@click.option("--include", metavar="H1@H2", help="Only these hosts (DeepSpeed syntax; host:0,1 picks GPUs).")
@click.option("--exclude", metavar="H1@H2", help="All hosts but these (host:0,1 drops GPUs).")
@click.option("--name", help="Job name.  [default: SCRIPT stem + time]")
@click.option(
    "--nproc-per-node", metavar="N", help="Processes per host (or gpu/auto).  [default: the host's slots, else 1]"
)
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable for the job (repeatable).")
@click.option("--env-file", multiple=True, metavar="FILE", help="KEY=VALUE lines for the job (repeatable).")
@click.option(
    "--forward-env/--no-forward-env",
    default=True,
    show_default=True,
    help="Forward NCCL_*, CUDA_*, PYTHON*, TORCH*, HF_*, PATH, LD_LIBRARY_PATH, VIRTUAL_ENV, OMP_NUM_THREADS.",
)
@click.option("--python", metavar="PATH", help="Python on the hosts.  [default: this one]")
@click.option("--cwd", metavar="DIR", help="Working directory on the hosts.  [default: this one]")
@click.option(
    "--runner",
    type=click.Choice(["torchrun", "python", "exec"]),
    default="torchrun",
    show_default=True,
    help="python: SCRIPT once per host with MASTER_ADDR/MASTER_PORT/NODE_RANK/NNODES; exec: SCRIPT is a command.",
)
@click.option(
    "--rdzv-port", type=click.IntRange(1, 65535), help="Rendezvous port on the first host.  [default: a free one]"
)
@click.option("--nnodes", metavar="MIN:MAX", help="Elastic node range for torchrun.  [default: the number of hosts]")
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True, help="torchrun restarts.")
@click.option("--torchrun-args", metavar="ARGS", help="More torchrun options in one string: '--monitor-interval 1'.")
@_connect_timeout
@click.option(
    "--max-parallel", type=click.IntRange(min=1), default=128, show_default=True, help="SSH handshakes at once."
)
@click.option("--force", is_flag=True, help="Replace a running job of the same name.")
@click.option("--no-teardown", is_flag=True, help="Keep the other hosts running when one fails.")
@click.option("--dry-run", is_flag=True, help="Print what each host would run; contact no host.")
@click.option("--follow", "-f", is_flag=True, help="Follow the logs after launching (Ctrl-C detaches).")
@click.option("--wait", is_flag=True, help="Wait for the job to end; exit 0 only if every host succeeded.")
@click.argument("script")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def launch(ctx: click.Context, /, script: str, script_args: tuple[str, ...], **options: Any) -> None:
    """Start SCRIPT with torchrun on every host, each in a detached tmux session.

    Everything after SCRIPT goes to the script unchanged.
    """
    from launcher import launch as launching

    spec = _launch_spec(script, script_args, options)
    if options["dry_run"]:
        render.print_dry_run(*launching.dry_run(spec), cwd=spec.cwd)
        return
    with render.LaunchProgress(len(spec.hosts)) as progress:
        record = _run(launching.launch_job(spec, progress.update))
    hosts = ", ".join(h.label for h in record.hosts)
    click.echo(f"Launched {record.name} on {len(record.hosts)} host(s): {hosts}")
    click.echo(f"  rendezvous  {record.rdzv_endpoint}")
    click.echo(f"  logs        launcher logs --follow {record.name}")
    click.echo(f"  status      launcher status {record.name}")
    click.echo(f"  stop        launcher kill {record.name}")
    if options["follow"]:
        status = _follow(record, render.LinePrinter(set(), stderr_only=False, no_prefix=False))
        if status is None:
            return  # detached: the job keeps running
    elif options["wait"]:
        try:
            status = _run(_wait_for_end(record))
        except KeyboardInterrupt:
            click.echo(f"\nlauncher: stopped waiting; {record.name} keeps running", err=True)
            ctx.exit(130)
    else:
        return
    render.print_status(status)
    ctx.exit(0 if status.state == "succeeded" else 1)


def _launch_spec(script: str, script_args: tuple[str, ...], options: dict[str, Any]) -> Any:
    import os
    import shlex

    from launcher import environment
    from launcher import launch as launching
    from launcher.hosts import resolve_hosts
    from launcher.selection import select_hosts
    from launcher.ssh import SshOptions

    cwd = options["cwd"] or os.getcwd()
    hosts = resolve_hosts(options["hosts_arg"])
    if options["include"] or options["exclude"]:
        hosts = select_hosts(hosts, options["include"], options["exclude"])
    return launching.LaunchSpec(
        script=script,
        script_args=script_args,
        hosts=hosts,
        name=options["name"],
        nproc_per_node=options["nproc_per_node"],
        env=environment.user_env(
            environ=os.environ,
            cwd=cwd,
            env_files=options["env_file"],
            assignments=options["env"],
            forward=options["forward_env"],
        ),
        python=options["python"] or sys.executable,
        cwd=cwd,
        runner=options["runner"],
        rdzv_port=options["rdzv_port"],
        nnodes=options["nnodes"],
        max_restarts=options["max_restarts"],
        torchrun_args=tuple(shlex.split(options["torchrun_args"] or "")),
        force=options["force"],
        teardown=not options["no_teardown"],
        ssh=SshOptions(connect_timeout=options["connect_timeout"], max_parallel=options["max_parallel"]),
    )


async def _wait_for_end(record: JobRecord) -> JobStatus:
    from launcher import jobs
    from launcher.records import remember_state

    # Every host, not the first failure: a failed job may still be stopping elsewhere.
    await jobs.wait_for_end(record, replace(_ssh_for(record), keepalive=5.0), on_problem=_warn)
    status = await jobs.job_status(record, _ssh_for(record))
    remember_state(record, status.state)
    return status


@cli.command()
@click.argument("name", required=False)
@_find_by_hosts
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends (Ctrl-C detaches).")
@click.option("--rank", "ranks", type=click.IntRange(min=0), multiple=True, help="Only this global rank (repeatable).")
@click.option("--host", "only_hosts", multiple=True, metavar="HOST", help="Only this host, as labelled (repeatable).")
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
@click.pass_context
def logs(ctx: click.Context, /, name: str | None, hosts_arg: str | None, follow: bool, **options: Any) -> None:
    """Print the job's output from every host, each line labelled with host and global rank.

    NAME defaults to the last job launched from here. With --follow it ends by itself
    when the job has ended on every host.
    """
    from launcher import jobs

    record = _find_job(name, hosts_arg)
    if options["only_hosts"]:
        unknown = set(options["only_hosts"]) - {h.label for h in record.hosts}
        if unknown:
            raise click.BadParameter(f"not a host of {record.name}: {', '.join(sorted(unknown))}", param_hint="--host")
        record = replace(record, hosts=tuple(h for h in record.hosts if h.label in options["only_hosts"]))
    show = render.LinePrinter(set(options["ranks"]), options["stderr_only"], options["no_prefix"])
    if not follow:
        filters = {"tail": options["tail"], "ranks": options["ranks"], "stderr_only": options["stderr_only"]}
        lines, failures = _run(jobs.read_logs(record, _ssh_for(record), **filters))
        for line in lines:
            show(line)
        for host, problem in failures.items():
            _warn(host, problem)
        ctx.exit(1 if failures else 0)
    status = _follow(
        record,
        show,
        keepalive=options["keepalive"],
        tail=options["tail"],
        ranks=options["ranks"],
        stderr_only=options["stderr_only"],
    )
    if status is not None and status.root_cause is not None:
        from rich.console import Console

        render.print_root_cause(Console(stderr=True, highlight=False), status.root_cause)


def _warn(host: str, problem: str) -> None:
    click.echo(f"launcher: {host}: {problem}", err=True)


def _follow(record: JobRecord, show: Any, keepalive: float = 5.0, **filters: Any) -> JobStatus | None:
    """Print lines as they come until the job ends everywhere; then its status, or None
    when Ctrl-C detached. ``filters``: ``tail``, ``ranks``, ``stderr_only`` (see jobs.follow_logs)."""
    from launcher import jobs

    ssh = replace(_ssh_for(record), keepalive=keepalive)

    async def stream() -> JobStatus:
        async for line in jobs.follow_logs(record, ssh, on_problem=_warn, **filters):
            show(line)
            sys.stdout.flush()
        return await jobs.job_status(record, _ssh_for(record))

    try:
        return _run(stream())
    except KeyboardInterrupt:
        click.echo(f"\nlauncher: stopped following; {record.name} keeps running", err=True)
        return None


@cli.command()
@click.argument("name", required=False)
@_find_by_hosts
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, name: str | None, hosts_arg: str | None, as_json: bool) -> None:
    """Show per host whether the job runs and how it ended.

    Exit status 0 when the job is running or succeeded, 1 otherwise.
    """
    from launcher import jobs
    from launcher.records import remember_state

    record = _find_job(name, hosts_arg)
    result = _run(jobs.job_status(record, _ssh_for(record)))
    remember_state(record, result.state)
    if as_json:
        click.echo(json.dumps(render.status_json(result)))
    else:
        render.print_status(result)
    ctx.exit(0 if result.state in ("running", "succeeded") else 1)


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--all",
    "kill_all",
    is_flag=True,
    help="Every launcher job on the hosts (of --hosts, else of every job launched from here).",
)
@_find_by_hosts
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL.",
)
@_connect_timeout
@click.pass_context
def kill(
    ctx: click.Context, /, name: str | None, kill_all: bool, hosts_arg: str | None, grace: float, connect_timeout: float
) -> None:
    """End job NAME on every host: its tmux session and every process it started.

    Exit status 0 only when every host is verified clean; an unreachable host is
    reported and the others are still cleaned.
    """
    from launcher import jobs
    from launcher.errors import UsageError

    if kill_all == (name is not None):
        raise UsageError("name one job, or pass --all")
    if kill_all:
        hosts = _all_known_hosts(hosts_arg)
        ssh = replace(_ssh_for(None), connect_timeout=connect_timeout)
        results = _run(jobs.kill_all_jobs(hosts, grace, ssh))
    else:
        from launcher.records import remember_state

        record = _find_job(name, hosts_arg)
        ssh = replace(_ssh_for(record), connect_timeout=connect_timeout)
        results = _run(jobs.kill_job(record, grace, ssh))
        if all(r.verified for r in results):
            remember_state(record, "killed")
    width = max(len(r.host) for r in results)
    for r in results:
        click.echo(f"{r.host:<{width}}  {'ok  ' if r.verified else 'FAIL'}  {r.message}")
    ctx.exit(0 if all(r.verified for r in results) else 1)


def _all_known_hosts(hosts_arg: str | None) -> tuple[Any, ...]:
    from launcher.hosts import resolve_hosts
    from launcher.records import all_records

    if hosts_arg is not None:
        return resolve_hosts(hosts_arg)
    unique = {h.label: h for record in all_records() for h in record.hosts}
    if not unique:
        from launcher.errors import UsageError

        raise UsageError("no job has been launched from here: pass --hosts FILE")
    return tuple(unique.values())


@cli.command()
@click.argument("name", required=False)
@click.option("--host", "host_label", metavar="HOST", help="Which host's session.  [default: the first]")
@_find_by_hosts
@click.option("--rw", is_flag=True, help="Allow typing into the session (default: read-only).")
def attach(name: str | None, host_label: str | None, hosts_arg: str | None, rw: bool) -> None:
    """Open the job's tmux session on a host (over ssh -t); detach with Ctrl-b d."""
    import os

    from launcher import commands

    record = _find_job(name, hosts_arg)
    hosts = [h for h in record.hosts if host_label in (None, h.label)]
    if not hosts:
        raise click.BadParameter(f"not a host of {record.name}: {host_label}", param_hint="--host")
    host = hosts[0]
    argv = commands.attach_argv(host.name, host.user, host.port, host.is_local, record.name, read_only=not rw)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]}: {exc.strerror}") from None


@cli.command(name="list")
def list_jobs() -> None:
    """Jobs launched from this machine, newest last, with their last known state (no host is asked)."""
    import time

    from rich.console import Console
    from rich.table import Table

    from launcher.records import all_records

    records = all_records()
    if not records:
        return
    table = Table(box=None)
    for column in ("job", "launched", "last known state", "hosts"):
        table.add_column(column, overflow="fold")
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.launched_at))
        hosts = ",".join(h.label for h in record.hosts)
        table.add_row(record.name, when, record.last_state or "launched", hosts)
    Console(highlight=False).print(table)


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


def _ssh_for(record: JobRecord | None) -> Any:
    from launcher.ssh import SshOptions

    return SshOptions(python=(record.python if record else None) or sys.executable)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one place turns errors into messages and exit codes."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        result = cli.main(args=argv, prog_name="launcher", standalone_mode=False)
    except click.exceptions.Abort:  # click's name for Ctrl-C; a launch is rolled back by then
        click.echo("Interrupted.", err=True)
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
