"""``launcher launch``: the options, then ``make_spec`` and ``launch_job`` from the library."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from launcher.cli import render
from launcher.cli.common import HOSTS_HELP, command_name, connect_timeout, run, ssh_for, warn
from launcher.cli.job_options import job_options, spec_keywords
from launcher.cli.syncing import SYNC_MAX_HELP

if TYPE_CHECKING:
    from launcher.job.records import JobRecord
    from launcher.job.status import JobStatus


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--hosts", "hosts_arg", metavar="FILE", help=HOSTS_HELP + "  [default: localhost]")
@click.option("--include", metavar="H1@H2", help="Only these hosts (DeepSpeed syntax; host:0,1 picks GPUs).")
@click.option("--exclude", metavar="H1@H2", help="All hosts but these (host:0,1 drops GPUs).")
@job_options(nproc_default="the host's slots, else one per GPU, else 1")
@click.option("--nnodes", metavar="MIN:MAX", help="Elastic node range for torchrun.  [default: the number of hosts]")
@connect_timeout
@click.option(
    "--max-parallel", type=click.IntRange(min=1), default=128, show_default=True, help="SSH handshakes at once."
)
@click.option("--sync", is_flag=True, help="First copy this directory to every host (what changed).")
@click.option("--remote-dir", metavar="DIR", help="--sync to DIR, the job's cwd there.  [default: this path]")
@click.option("--sync-max", metavar="SIZE", default="1G", help=SYNC_MAX_HELP)
@click.option("--allow-mismatch", is_flag=True, help="Launch though Python or torch differ from here.")
@click.option("--force", is_flag=True, help="Replace a running job of the same name.")
@click.option("--no-teardown", is_flag=True, help="Keep the other hosts running when one fails.")
@click.option("--allow-busy-gpus", is_flag=True, help="Launch even on GPUs another program or launcher job holds.")
@click.option(
    "--heartbeat-timeout",
    type=float,
    default=15.0,
    show_default=True,
    metavar="S",
    help="A host silent this long to the others is lost, and the job stops.",
)
@click.option(
    "--preflight", type=click.Choice(["bandwidth"]), help="First run doctor's checks and bandwidth test on the hosts."
)
@click.option("--exclude-slow", is_flag=True, help="With --preflight: leave out the hosts that failed it, not refuse.")
@click.option(
    "--restarts",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Launch the job again up to N times when it fails or loses a host, leaving a bad host out.",
)
@click.option("--spares", metavar="FILE|H1,H2", help="Hosts to take the place of one left out (with --restarts).")
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
    from launcher.launching.spec import make_spec
    from launcher.launching.start import dry_run, launch_job

    spec = make_spec(
        script,
        script_args,
        hosts=options["hosts_arg"],
        include=options["include"],
        exclude=options["exclude"],
        **spec_keywords(options),
        nnodes=options["nnodes"],
        force=options["force"],
        teardown=not options["no_teardown"],
        allow_busy_gpus=options["allow_busy_gpus"],
        heartbeat_timeout=options["heartbeat_timeout"],
        connect_timeout=options["connect_timeout"],
        max_parallel=options["max_parallel"],
        sync=options["sync"],
        remote_dir=options["remote_dir"],
        sync_max=options["sync_max"],
        allow_mismatch=options["allow_mismatch"],
        restarts=options["restarts"],
        spares=options["spares"],
    )
    if options["dry_run"]:
        render.print_dry_run(*dry_run(spec), cwd=spec.cwd)
        return
    if options["exclude_slow"] and not options["preflight"]:
        from launcher.errors import UsageError

        raise UsageError("--exclude-slow needs --preflight bandwidth")
    if options["preflight"]:
        from launcher.cli.doctor import preflight

        spec = preflight(spec, exclude=options["exclude_slow"])
    with render.LaunchProgress(len(spec.hosts), [h.label for h in spec.hosts]) as progress:
        record = run(launch_job(spec, progress.update))
    hosts = ", ".join(h.label for h in record.hosts)
    me = command_name()
    click.echo(f"Launched {record.name} on {len(record.hosts)} host(s): {hosts}")
    click.echo(f"  rendezvous  {record.rdzv_endpoint}")
    click.echo(f"  logs        {me} logs --follow {record.name}")
    click.echo(f"  status      {me} status {record.name}")
    click.echo(f"  stop        {me} kill {record.name}")
    if record.watcher is not None:
        spares = f", spares {', '.join(h.label for h in record.spares)}" if record.spares else ""
        click.echo(f"  recovery    up to {record.restarts} restart(s){spares}; watcher pid {record.watcher['pid']}")
    if options["follow"]:
        show = render.LinePrinter(set(), stderr_only=False, no_prefix=False)
        status = follow(record, show, max_parallel=options["max_parallel"])
        if status is None:
            return  # detached: the job keeps running
    elif options["wait"]:
        try:
            status = run(wait_until_ended(record, options["max_parallel"]))
        except KeyboardInterrupt:
            click.echo(f"\nlauncher: stopped waiting; {record.name} keeps running", err=True)
            ctx.exit(130)
    else:
        return
    render.print_status(status)
    ctx.exit(0 if status.state == "succeeded" else 1)


async def wait_until_ended(record: JobRecord, max_parallel: int = 128) -> JobStatus:
    """Once the job has ended on every host: its status (``launch --wait``, ``sbatch --wait``)."""
    from launcher.job.status import job_status, wait_for_end
    from launcher.job.watcher import wait_through_attempts

    async def one(attempt: JobRecord) -> None:
        # Every host, not the first failure: a failed job may still be stopping elsewhere.
        await wait_for_end(
            attempt, replace(ssh_for(attempt), keepalive=5.0, max_parallel=max_parallel), on_problem=warn
        )

    record = await wait_through_attempts(record, one)  # --restarts: until no attempt follows
    return await job_status(record, replace(ssh_for(record), connect_timeout=5.0, max_parallel=max_parallel, retries=0))


def follow(
    record: JobRecord, show: Any, keepalive: float = 5.0, max_parallel: int = 128, **filters: Any
) -> JobStatus | None:
    """Print lines as they come until the job ends everywhere; then its status, or None
    when Ctrl-C detached. ``filters``: ``tail``, ``ranks``, ``stderr_only`` (see logs.follow_logs)."""
    import sys

    from launcher.job.logs import follow_logs
    from launcher.job.status import job_status
    from launcher.job.watcher import wait_through_attempts

    ssh = replace(ssh_for(record), keepalive=keepalive, max_parallel=max_parallel)

    async def stream() -> JobStatus:
        async def one(attempt: JobRecord) -> None:
            if attempt.restarts:  # each attempt's lines are marked with its number
                show.attempt = attempt.attempt
                hosts = ", ".join(h.label for h in attempt.hosts)
                click.echo(f"--- attempt {attempt.attempt} of {attempt.restarts + 1} on {hosts} ---")
            async for line in follow_logs(attempt, ssh, on_problem=warn, **filters):
                show(line)
                sys.stdout.flush()

        last = await wait_through_attempts(record, one)
        return await job_status(last, replace(ssh_for(last), connect_timeout=5.0, max_parallel=max_parallel, retries=0))

    try:
        return run(stream())
    except KeyboardInterrupt:
        click.echo(f"\nlauncher: stopped following; {record.name} keeps running", err=True)
        return None
