"""What each host will run: its command and its variables, for a launch or a dry run (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher import commands
from launcher.hosts import Host
from launcher.protocol import RUNS_PATH
from launcher.spec import LaunchSpec


def dry_run_dir(job: str) -> str:
    """A node's run directory as the dry run shows it: only the node knows its state
    directory and its hostname."""
    return f"${{XDG_STATE_HOME:-~/.local/state}}/{RUNS_PATH}/{job}/HOSTNAME"


@dataclass(frozen=True)
class NodePlan:
    """What one host will run: its command and the variables set on top of its login environment."""

    host: Host
    argv: list[str]
    env: dict[str, str]


def plan_nodes(spec: LaunchSpec, name: str, endpoint: tuple[str, int | str], run_dirs: Sequence[str]) -> list[NodePlan]:
    """Every host's plan; ``endpoint`` is the rendezvous, ``run_dirs`` each node's run directory."""
    plans = []
    for index, host in enumerate(spec.hosts):
        log_dir = f"{run_dirs[index]}/torchrun"
        command = commands.node_command(
            runner=spec.runner,
            python=spec.python,
            nnodes=len(spec.hosts),
            nnodes_spec=spec.nnodes,
            node_rank=index,
            nproc_per_node=nproc_for(spec, host),
            endpoint=endpoint,
            job=name,
            log_dir=log_dir,
            script=spec.script,
            script_args=spec.script_args,
            max_restarts=spec.max_restarts,
            torchrun_args=spec.torchrun_args,
        )
        env = {**commands.job_env(spec.env, log_dir), **command.env}
        if host.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in host.gpus)
        plans.append(NodePlan(host, command.argv, env))
    return plans


def dry_plan(spec: LaunchSpec, name: str) -> list[NodePlan]:
    """What every host would run, without contacting any.

    Two values are only known at launch and shown as placeholders: the free port picked
    on the first host, and each node's run directory (under its own state directory,
    named by its hostname).
    """
    endpoint = (spec.hosts[0].name, spec.rdzv_port or "PORT")
    return plan_nodes(spec, name, endpoint, [dry_run_dir(name)] * len(spec.hosts))


def nproc_for(spec: LaunchSpec, host: Host) -> str:
    """``--nproc-per-node`` wins over the host's slots; else 1."""
    if spec.nproc_per_node is not None:
        return spec.nproc_per_node
    return str(host.slots or 1)
