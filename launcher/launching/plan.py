"""What each host will run: its command and its variables, for a launch or a dry run (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.hosts.files import Host
from launcher.launching import commands, rendezvous
from launcher.launching.spec import LaunchSpec
from launcher.protocol.base import ATTEMPT_VARIABLE
from launcher.protocol.messages import Prepared
from launcher.protocol.paths import run_dir_shown


@dataclass(frozen=True)
class NodePlan:
    """What one host will run: its command and the variables set on top of its login environment."""

    host: Host
    argv: list[str]
    env: dict[str, str]


GPUS = "GPUS"
"""The dry run's ``--nproc-per-node`` where each host's GPUs decide it at launch."""
IFNAME = "IFNAME"
"""The dry run's interface variables: each host's is chosen at launch."""


def plan_nodes(
    spec: LaunchSpec,
    name: str,
    endpoint: tuple[str, int | str],
    run_dirs: Sequence[str],
    prepared: Sequence[Prepared] | None = None,
    interfaces: Sequence[str | None] | None = None,
) -> list[NodePlan]:
    """Every host's plan; ``endpoint`` is the rendezvous, ``run_dirs`` each node's run
    directory, ``prepared`` what each host's prepare found (its GPUs, its environment),
    ``interfaces`` the one each host reaches the rendezvous over."""
    return [
        plan_node(
            spec,
            name,
            index,
            endpoint,
            run_dirs[index],
            prepared[index] if prepared is not None else None,
            interfaces[index] if interfaces is not None else None,
            placeholder=prepared is None,
        )
        for index in range(len(spec.hosts))
    ]


def plan_node(
    spec: LaunchSpec,
    name: str,
    index: int,
    endpoint: tuple[str, int | str],
    run_dir: str,
    answer: Prepared | None,
    interface: str | None,
    placeholder: bool = False,
) -> NodePlan:
    """Host ``index``'s plan (``plan_nodes``); ``placeholder``: a dry run (GPUs unknown)."""
    host = spec.hosts[index]
    log_dir = f"{run_dir}/torchrun"
    command = commands.node_command(
        runner=spec.runner,
        python=spec.python,
        nnodes=len(spec.hosts),
        nnodes_spec=spec.nnodes,
        node_rank=index,
        nproc_per_node=nproc_for(spec, host, answer.gpus if answer else None, placeholder=placeholder),
        endpoint=endpoint,
        job=name,
        log_dir=log_dir,
        script=spec.script,
        script_args=spec.script_args,
        max_restarts=spec.max_restarts,
        torchrun_args=spec.torchrun_args,
    )
    env = {**commands.job_env(spec.env, log_dir), **command.env, ATTEMPT_VARIABLE: str(spec.attempt)}
    env.update(interface_env(spec, interface, answer))
    # nvidia-smi numbers GPUs in PCI bus order, CUDA by default fastest first: the same
    # numbers must mean the same GPUs in --include, the node's answer and the ranks.
    env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    if answer is not None and answer.cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = answer.cuda_visible  # the node's own ids (its allocation)
    elif host.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in host.gpus)
    return NodePlan(host, command.argv, env)


def interface_env(spec: LaunchSpec, interface: str | None, answer: Prepared | None) -> dict[str, str]:
    """The interface variables of one host (``rendezvous.interface_env``), known once every
    host has reached the first: a launch sends them with the commit."""
    return rendezvous.interface_env(interface, spec.env, answer.preset_env if answer else ())


def dry_plan(spec: LaunchSpec, name: str) -> list[NodePlan]:
    """What every host would run, without contacting any.

    Two values are only known at launch and shown as placeholders: the free port picked
    on the first host, and each node's run directory (under its own state directory,
    named by its hostname).
    """
    endpoint = (spec.hosts[0].name, spec.rdzv_port or "PORT")
    interfaces = [IFNAME if len(spec.hosts) > 1 else None] * len(spec.hosts)
    return plan_nodes(spec, name, endpoint, [run_dir_shown(name)] * len(spec.hosts), interfaces=interfaces)


def nproc_for(spec: LaunchSpec, host: Host, gpus: int | None = None, placeholder: bool = False) -> str:
    """``--nproc-per-node`` wins over the host's slots; else one per GPU the host has
    (``gpus``, from its prepare; ``GPUS`` in a dry run), else 1."""
    if spec.nproc_per_node is not None:
        return spec.nproc_per_node
    if host.slots is not None:
        return str(host.slots)
    if placeholder:
        return GPUS
    return str(gpus or 1)
