"""``launcher sbatch``: the batch script of a launch (printed, written, or submitted)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from launcher.cli.common import command_name, run, ssh_for, warn
from launcher.cli.job_options import job_options, spec_keywords

if TYPE_CHECKING:
    from launcher.job.records import JobRecord

SCRIPT_MODE = 0o700
"""``-o FILE``: only its user may read it (it may hold tokens), and run it."""
TASK_START_S = 60.0
"""How long each node's task may take to appear (its run directory) once SLURM runs the job."""


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-N", "--nodes", type=click.IntRange(1, 65536), default=1, show_default=True, help="Nodes to ask for.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), help="GPUs per node (also the processes per node).")
@click.option("--cpus-per-task", type=click.IntRange(min=1), help="CPUs of each node's task (torchrun and workers).")
@click.option("--time", "time_limit", metavar="D-HH:MM:SS", help="Time limit.")
@click.option("--partition", "-p", help="SLURM partition.")
@click.option("--account", "-A", help="SLURM account.")
@click.option("--sbatch-arg", multiple=True, metavar="OPTION", help="Another #SBATCH line: '--output=run-%j.out'.")
@job_options(nproc_default="--gpus-per-node, else 1")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="Write the script here, not stdout.")
@click.option("--submit", is_flag=True, help="Submit it with sbatch and record the job for status/logs/kill.")
@click.option(
    "--start-timeout",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="With --submit: seconds the job may stay pending before it is cancelled.",
)
@click.option("--wait", is_flag=True, help="With --submit: wait for the job to end; exit 0 only if it succeeded.")
@click.argument("script")
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def sbatch(ctx: click.Context, /, script: str, script_args: tuple[str, ...], **options: Any) -> None:
    """Write the batch script that runs SCRIPT as `launcher launch` would, under SLURM.

    One task per node under srun, torchrun with its rendezvous at the first node of the
    allocation, the same variables, and logs that `launcher logs` reads. With --submit,
    `launcher status`, `logs` and `kill` work for the job (kill through scancel).
    """
    from launcher.errors import UsageError
    from launcher.job import slurm as slurm_jobs
    from launcher.job.records import make_records_dir
    from launcher.launching import sbatch as batch
    from launcher.launching.commands import default_job_name
    from launcher.launching.spec import make_spec

    _refuse_an_option_as_script(script)
    settings = batch.SbatchOptions(
        nodes=options["nodes"],
        gpus_per_node=options["gpus_per_node"],
        cpus_per_task=options["cpus_per_task"],
        time=options["time_limit"],
        partition=options["partition"],
        account=options["account"],
        extra=options["sbatch_arg"],
    )
    spec = make_spec(
        script,
        script_args,
        hosts=batch.placeholder_hosts(settings),
        **spec_keywords(options),
    )
    name = spec.name or default_job_name(spec.script)
    text = batch.batch_script(spec, name, settings)
    if options["submit"]:
        slurm_jobs.command("sbatch")  # before anything is written
        make_records_dir()  # and a state directory open to others, not ours, before anything is submitted
    if options["output"]:
        _write_script(options["output"], text, batch.secret_names(spec, name))
    elif not options["submit"]:
        click.echo(text, nl=False)
        return
    if options["wait"] and not options["submit"]:
        raise UsageError("--wait needs --submit")
    if options["submit"]:
        record = _submit(spec, name, text, options["output"], options["start_timeout"])
        if options["wait"]:
            _wait(ctx, record)


def _write_script(path: str, text: str, secrets: list[str]) -> None:
    """The script at ``path``, 0700 from its first byte: it holds the job's variables, and runs.
    The secret-named ones are said on stderr, so that the file is not shared unawares."""
    from launcher.errors import UsageError
    from launcher.protocol import private

    try:
        private.write_file(Path(path), text.encode("utf-8"), mode=SCRIPT_MODE)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    if secrets:
        click.echo(
            f"launcher: {path} holds secret-named variables {', '.join(secrets)}"
            f" (mode {SCRIPT_MODE:04o}: readable by you only; keep it so)",
            err=True,
        )


def _submit(spec: Any, name: str, text: str, path: str | None, start_timeout: float) -> JobRecord:
    from launcher.hosts.files import Host
    from launcher.job import slurm as slurm_jobs
    from launcher.job.records import JobRecord, save_record

    job_id = slurm_jobs.submit(text, path)
    click.echo(f"Submitted {name} as SLURM job {job_id}; waiting for its nodes...")
    try:
        started = slurm_jobs.wait_until_started(job_id, start_timeout)
        record = JobRecord(
            name=name,
            hosts=tuple(Host(node) for node in started.nodes),
            launched_at=time.time(),
            script=spec.script,
            python=spec.python,
            cwd=spec.cwd,
            slurm_job_id=job_id,
        )
        unseen = _unseen_hosts(record, TASK_START_S)
    except KeyboardInterrupt:
        slurm_jobs.cancel(job_id)
        raise
    save_record(record)
    for host in unseen:
        warn(
            host,
            f"no run directory of {name} seen there over SSH after {TASK_START_S:g} s"
            " (do SLURM jobs and SSH logins see another $XDG_STATE_HOME?)",
        )
    me = command_name()
    click.echo(f"Started {name} (SLURM job {job_id}) on {len(started.nodes)} node(s): {', '.join(started.nodes)}")
    click.echo(f"  logs        {me} logs --follow {name}")
    click.echo(f"  status      {me} status {name}")
    click.echo(f"  stop        {me} kill {name}")
    return record


def _wait(ctx: click.Context, record: JobRecord) -> None:
    from launcher.cli import render
    from launcher.cli.launching import wait_until_ended

    try:
        status = run(wait_until_ended(record))
    except KeyboardInterrupt:
        click.echo(f"\nlauncher: stopped waiting; {record.name} keeps running", err=True)
        ctx.exit(130)
    render.print_status(status)
    ctx.exit(0 if status.state == "succeeded" else 1)


def _unseen_hosts(record: JobRecord, timeout: float) -> list[str]:
    """The nodes where the job's task has not yet made its run directory, as status sees them.

    Until then ``status`` says ``unknown`` and ``logs --follow`` would end at once there.
    """
    from launcher.errors import SlurmError
    from launcher.job import slurm as slurm_jobs
    from launcher.job.status import job_status

    assert record.slurm_job_id is not None
    deadline = time.monotonic() + timeout
    while True:
        status = run(job_status(record, ssh_for(record)))
        # Not yet there (unknown), or not to be asked yet (unreachable: its --python may not
        # even exist, so the task will not start either): only SLURM's state says which.
        unseen = [host.host for host in status.hosts if host.state in ("unknown", "unreachable")]
        if not unseen or time.monotonic() > deadline:
            return unseen
        job = slurm_jobs.job(record.slurm_job_id)
        if job is None or job.state not in slurm_jobs.ACTIVE:
            state = job.state if job else "gone"
            raise SlurmError(
                f"SLURM job {record.slurm_job_id} ended ({state}) before its task started on"
                f" {', '.join(unseen)}: see the job's output file",
                record.slurm_job_id,
            )
        time.sleep(0.5)


_NODE_CHOICES = ("--hosts", "--include", "--exclude")


def _refuse_an_option_as_script(script: str) -> None:
    """An option sbatch does not take, given before SCRIPT, arrives as SCRIPT (unknown options
    are kept as arguments): refused, or the batch script would run ``--hosts`` as the
    training script."""
    from launcher.errors import UsageError

    if not script.startswith("-"):
        return
    option = script.partition("=")[0]
    if option in _NODE_CHOICES:
        raise UsageError(f"sbatch takes no {option}: SLURM chooses the nodes (use #SBATCH --nodelist or --nodes)")
    raise UsageError(f"sbatch takes no {option} (see launcher sbatch --help)")
