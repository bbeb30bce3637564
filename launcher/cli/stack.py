"""``launcher stack``: where every rank of a running job is, as a roll-call."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import click

from launcher.cli.common import as_json, find_by_hosts, find_job, only_hosts, only_ranks, run, ssh_for

if TYPE_CHECKING:
    from launcher.job.stack import RollCall


@click.command()
@click.argument("name", required=False)
@find_by_hosts
@as_json
@click.option("--native", is_flag=True, help="Native frames too (C/C++ under Python; py-spy only).")
@only_ranks
@only_hosts
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.5),
    default=20.0,
    show_default=True,
    help="Seconds for each rank's stack.",
)
@click.option(
    "--nccl",
    is_flag=True,
    help="Also make every NCCL rank dump its flight recorder, and show what torch's analyzer says of the dumps.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "py-spy", "faulthandler"]),
    default="auto",
    hidden=True,
    help="How to take the stacks (auto: py-spy, else the in-process fallback).",
)
@click.pass_context
def stack(ctx: click.Context, /, name: str | None, hosts_arg: str | None, as_json: bool, **options: Any) -> None:
    """Show where every rank of job NAME is: ranks grouped by their innermost frame in your
    code (and the library call under it), the largest group first, the odd ones named.

    Every thread's full stack is saved on each host (the paths are printed). The job is not
    stopped: each rank pauses for a moment (py-spy), or writes its own stacks when py-spy
    may not trace it (a faulthandler armed at launch). Exit status 1 when no stack at all
    could be taken.
    """
    from launcher.job.stack import take_stacks

    record = find_job(name, hosts_arg)
    if options["only_hosts"]:
        unknown = set(options["only_hosts"]) - {h.label for h in record.hosts}
        if unknown:
            raise click.BadParameter(f"not a host of {record.name}: {', '.join(sorted(unknown))}", param_hint="--host")
        record = replace(record, hosts=tuple(h for h in record.hosts if h.label in options["only_hosts"]))
    call = take_stacks(
        record,
        ssh_for(record),
        native=options["native"],
        ranks=options["ranks"],
        method=options["method"],
        timeout=options["timeout"],
        nccl=options["nccl"],
    )
    result = run(call)
    if as_json:
        click.echo(json.dumps({**asdict(result), "taken": result.taken, "total": result.total}))
    else:
        for line in roll_call_lines(result):
            click.echo(line)
    ctx.exit(0 if result.taken else 1)


def roll_call_lines(call: RollCall, full: bool = True) -> list[str]:
    """The roll-call as text: the largest group, then the odd ranks by rank and host."""
    lines = []
    total = call.total
    for index, group in enumerate(call.groups):
        count = len(group.ranks)
        if index == 0 and count > 1:
            lead = f"all {count} ranks" if count == total else f"{count} of {total} ranks"
            lines.append(f"{lead} in {group.where}")
        elif count <= 3:
            named = ", ".join(f"rank {p.rank} on {p.host}" for p in group.ranks)
            lines.append(f"{named} {'elsewhere: ' if index else 'in '}{group.where}")
        else:
            ranks = ", ".join(str(p.rank) for p in group.ranks)
            lines.append(f"{count} of {total} ranks (ranks {ranks}) in {group.where}")
    for place in call.missing:
        lines.append(f"rank {place.rank} on {place.host}: no stack: {place.error}")
    for host, why in call.unreachable:
        lines.append(f"{host}: no stack: {why}")
    methods = sorted({p.method for g in call.groups for p in g.ranks if p.method})
    if methods:
        lines.append(f"taken with {' and '.join(methods)}")
    if full:
        odd = [p for g in call.groups[1:] for p in g.ranks][:3]
        for place in odd:
            lines.append(f"full stacks of rank {place.rank}: {place.host}:{place.path}")
        lines.extend(f"full stacks: {where}" for where in call.directories_shown())
    if call.flight_recorder is not None:
        lines.append("NCCL flight recorder (torch.distributed.flight_recorder.fr_trace):")
        lines.extend(f"  {line}" for line in call.flight_recorder.splitlines())
        lines.extend(f"  no dump: {problem}" for problem in call.flight_recorder_problems)
    return lines
