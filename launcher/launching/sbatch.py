"""``launcher sbatch``: the batch script that runs a launch's job under SLURM (pure).

The script does what the seeds' job scripts do, and what ``launcher launch`` does over SSH:
one task per node under ``srun``, torchrun with its c10d rendezvous at the allocation's
first node (``scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1``) on a port
found free there, and the same variables (``make_spec``'s). Each task is
``python -m launcher.node.slurm_task``, which runs the node supervisor on the node's run
directory, so the logs are where ``launcher logs`` reads them.

Quoting: the script is a shell script, so every value in it is quoted with ``shlex.quote``
here, in ``batch_script``, and nowhere else. ``#SBATCH`` lines are read by sbatch, not by
the shell: their values may hold no whitespace or newline (a newline would end the comment).

The script holds the job's variables, tokens and keys included (``secret_names``): the CLI
writes it readable by its user only.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, replace

from launcher.errors import UsageError
from launcher.hosts.files import Host
from launcher.launching.environment import is_secret
from launcher.launching.plan import NodePlan, plan_nodes
from launcher.launching.spec import LaunchSpec
from launcher.protocol.codec import to_wire
from launcher.protocol.slurm import SlurmTask, TaskCommand, slurm_field

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIME = re.compile(r"[0-9:-]+|UNLIMITED|INFINITE", re.IGNORECASE)
_FREE_PORT = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'


@dataclass(frozen=True)
class SbatchOptions:
    """What the ``#SBATCH`` lines ask SLURM for."""

    nodes: int = 1
    gpus_per_node: int | None = None
    """Also the processes per node, unless ``--nproc-per-node`` says otherwise."""
    cpus_per_task: int | None = None
    """CPUs for each node's task (torchrun and all its workers)."""
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    extra: tuple[str, ...] = ()
    """More sbatch options, one per item (``--sbatch-arg``), say ``--output=run-%j.out``."""


def placeholder_hosts(options: SbatchOptions) -> tuple[Host, ...]:
    """Stand-ins for the nodes SLURM will pick: their number and slots are what counts."""
    if not isinstance(options.nodes, int) or not 1 <= options.nodes <= 65536:
        raise UsageError(f"--nodes must be a whole number from 1 to 65536, got {options.nodes!r}")
    return tuple(Host(f"node{index}", slots=options.gpus_per_node) for index in range(options.nodes))


def node_plans(spec: LaunchSpec, name: str) -> tuple[NodePlan, NodePlan]:
    """Node 0's plan and every other node's, with what only a node knows as placeholders."""
    endpoint = (slurm_field("rdzv_host"), slurm_field("rdzv_port"))
    plans = plan_nodes(spec, name, endpoint, [slurm_field("run_dir")] * len(spec.hosts))
    first, rest = plans[0], plans[min(1, len(plans) - 1)]
    if "NODE_RANK" in rest.env:  # --runner python/exec: each node its own
        rest = replace(rest, env={**rest.env, "NODE_RANK": slurm_field("node_rank")})
    return first, rest


def slurm_task(name: str, cwd: str, first: NodePlan, rest: NodePlan) -> SlurmTask:
    """What ``launcher.node.slurm_task`` gets: each command with the variables not exported."""
    common = exported(first, rest)
    return SlurmTask(
        job=name,
        cwd=cwd,
        first=TaskCommand(first.argv, _own(first.env, common)),
        rest=TaskCommand(rest.argv, _own(rest.env, common)),
    )


def exported(first: NodePlan, rest: NodePlan) -> dict[str, str]:
    """The variables the script exports: the same on every node, known now, printable.

    The others (node values, control characters such as torchrun's rank prefix) travel
    in the task's JSON, byte for byte.
    """
    return {
        key: value
        for key, value in first.env.items()
        if rest.env.get(key) == value and _VARIABLE.fullmatch(key) and value.isprintable() and "\0" not in value
    }


def _own(env: dict[str, str], common: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key not in common}


def sbatch_lines(name: str, spec: LaunchSpec, options: SbatchOptions) -> list[str]:
    """The ``#SBATCH`` lines; each value checked, as sbatch reads them without a shell."""
    lines = [f"--job-name={name}", f"--nodes={len(spec.hosts)}", "--ntasks-per-node=1"]
    if options.gpus_per_node is not None:
        lines.append(f"--gpus-per-node={_count(options.gpus_per_node, '--gpus-per-node')}")
    if options.cpus_per_task is not None:
        lines.append(f"--cpus-per-task={_count(options.cpus_per_task, '--cpus-per-task')}")
    if options.time is not None:
        if not _TIME.fullmatch(options.time):
            raise UsageError(f"--time must be SLURM's [D-]HH:MM:SS or minutes, got {options.time!r}")
        lines.append(f"--time={options.time}")
    for option, value in (("partition", options.partition), ("account", options.account)):
        if value is not None:
            lines.append(f"--{option}={_plain(value, f'--{option}')}")
    lines.append(f"--chdir={_plain(spec.cwd, '--cwd')}")
    for extra in options.extra:
        if not extra.startswith("-"):
            raise UsageError(f"--sbatch-arg takes an sbatch option such as --output=run-%j.out, got {extra!r}")
        lines.append(_plain(extra, "--sbatch-arg"))
    return [f"#SBATCH {line}" for line in lines]


def batch_script(spec: LaunchSpec, name: str, options: SbatchOptions) -> str:
    """The whole batch script for job ``name`` (``spec.hosts``: ``placeholder_hosts``)."""
    first, rest = node_plans(spec, name)
    task = slurm_task(name, spec.cwd, first, rest)
    python = shlex.quote(spec.python)
    cpus = f" --cpus-per-task={options.cpus_per_task}" if options.cpus_per_task is not None else ""
    port = str(spec.rdzv_port) if spec.rdzv_port is not None else f"$({python} -c {shlex.quote(_FREE_PORT)})"
    lines = [
        "#!/bin/bash",
        *sbatch_lines(name, spec, options),
        "#",
        "# Written by `launcher sbatch`: the job `launcher launch` would start, one task per node",
        "# under srun, torchrun's c10d rendezvous at the allocation's first node. Each node's",
        "# output goes to its launcher run directory, where these read it:",
        f"#   launcher logs {name}",
        f"#   launcher status {name}",
        "set -euo pipefail",
        "",
        "# The job's variables, as launcher launch forwards and sets them (srun passes them on).",
        *(f"export {key}={shlex.quote(value)}" for key, value in exported(first, rest).items()),
        "",
        "# The batch script runs on the allocation's first node: the rendezvous is here.",
        'rdzv_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        f"rdzv_port={port}",
        "",
        'srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \\',
        # srun does not take sbatch's --cpus-per-task (SLURM >= 22.05): say it again.
        f"  --kill-on-bad-exit=1 --export=ALL{cpus} \\",
        f'  {python} -P -m launcher.node.slurm_task "$rdzv_host" "$rdzv_port" \\',
        f"  {shlex.quote(json.dumps(to_wire(task)))}",
    ]
    return "\n".join(lines) + "\n"


def secret_names(spec: LaunchSpec, name: str) -> list[str]:
    """The variables with a value that the script of ``batch_script`` holds and whose names
    say they are secrets (``environment.is_secret``, as the dry run masks them), sorted."""
    first, rest = node_plans(spec, name)
    return sorted({key for plan in (first, rest) for key, value in plan.env.items() if value and is_secret(key)})


def _count(value: int, option: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise UsageError(f"{option} must be a whole number >= 1, got {value!r}")
    return value


def _plain(value: str, option: str) -> str:
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise UsageError(f"{option} {value!r}: an #SBATCH value may hold no whitespace or control characters")
    return value
