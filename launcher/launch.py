"""Launch: start a job on every host, or on none.

A failure on any host, or Ctrl-C, removes what was started on the others. A dry run
shows what each host would run without contacting any.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from launcher import commands
from launcher.errors import HostError, JobError, LauncherError
from launcher.hosts import Host
from launcher.records import JobRecord, all_records, save_record
from launcher.ssh import NodeAgent, SshOptions, open_agent


@dataclass(frozen=True)
class LaunchSpec:
    """Everything ``launch`` needs; the CLI fills it from its options."""

    script: str
    """The training script, as the nodes will open it (relative to ``cwd``)."""
    script_args: tuple[str, ...] = ()
    hosts: tuple[Host, ...] = ()
    name: str | None = None
    """Job name; default ``<script stem>-<time>``."""
    nproc_per_node: str | None = None
    """Processes per node (a number, or torchrun's ``gpu``/``auto``); default: the host's slots, else 1."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra variables for the job (``-e KEY=VALUE``)."""
    python: str = sys.executable
    cwd: str = field(default_factory=os.getcwd)
    rdzv_port: int | None = None
    """Port of the c10d store on the first host; default: one found free there."""
    runner: commands.Runner = "torchrun"
    """``torchrun``; ``python`` runs the script once per node with MASTER_ADDR/NODE_RANK/...;
    ``exec`` runs SCRIPT as a command."""
    nnodes: str | None = None
    """torchrun's ``--nnodes`` for elastic jobs (``MIN:MAX``); default: the number of hosts."""
    max_restarts: int = 0
    torchrun_args: tuple[str, ...] = ()
    """More torchrun options, placed before the script."""
    force: bool = False
    """Replace a job of the same name that is still running, instead of refusing."""
    teardown: bool = True
    """When the job fails on one node, stop it on all (else the others hang at a collective)."""
    ssh: SshOptions = field(default_factory=SshOptions)


@dataclass(frozen=True)
class NodePlan:
    """What one host will run: its command and the variables set on top of its login environment."""

    host: Host
    argv: list[str]
    env: dict[str, str]


def plan_nodes(spec: LaunchSpec, name: str, endpoint: tuple[str, int | str], run_dirs: Sequence[str]) -> list[NodePlan]:
    plans = []
    for index, host in enumerate(spec.hosts):
        log_dir = f"{run_dirs[index]}/torchrun"
        command = commands.node_command(
            runner=spec.runner,
            python=spec.python,
            nnodes=len(spec.hosts),
            nnodes_spec=spec.nnodes,
            node_rank=index,
            nproc_per_node=_nproc(spec, host),
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


def dry_run(spec: LaunchSpec) -> tuple[str, list[NodePlan]]:
    """The job name and what every host would run; contacts no host.

    Two values are only known at launch and shown as placeholders: the free port picked
    on the first host, and each node's run directory (it holds the node's hostname).
    """
    name = _job_name(spec)
    endpoint = (spec.hosts[0].name, spec.rdzv_port or "PORT")
    run_dirs = [f"~/.local/state/launcher/runs/{name}/HOSTNAME" for _ in spec.hosts]
    return name, plan_nodes(spec, name, endpoint, run_dirs)


async def launch_job(spec: LaunchSpec, on_progress: Callable[[str, str], None] | None = None) -> JobRecord:
    """Start the job on every host, or on none.

    ``on_progress(host, event)`` hears ``connected`` and ``started`` for each host.
    """
    name = _job_name(spec)
    ssh = replace(spec.ssh, python=spec.python)
    progress = on_progress or (lambda host, event: None)
    agents: list[NodeAgent | None] = [None] * len(spec.hosts)
    # Only these may be rolled back: elsewhere a job of the same name may be running already.
    starting: list[NodeAgent] = []
    try:
        prepared = await _connect_and_prepare(spec, name, ssh, agents, progress)
        endpoint = (_rendezvous_address(spec.hosts, agents), spec.rdzv_port or prepared[0]["port"])
        plans = plan_nodes(spec, name, endpoint, [p["run_dir"] for p in prepared])

        watch = spec.teardown and len(spec.hosts) > 1

        async def start(index: int, agent: NodeAgent, plan: NodePlan) -> None:
            starting.append(agent)
            teardown = {"node": index, "address": endpoint[0], "port": prepared[0]["watch_port"]} if watch else None
            await agent.call(
                "start", timeout=90, job=name, argv=plan.argv, env=plan.env, cwd=spec.cwd, teardown=teardown
            )  # the node waits up to 60 s for the job's supervisor
            progress(agent.host.label, "started")

        steps = [start(i, a, p) for i, (a, p) in enumerate(zip(agents, plans, strict=True)) if a is not None]
        await _all_or_nothing(steps, spec.hosts, "launch failed, nothing left running")
    except BaseException:
        await asyncio.shield(_roll_back(name, starting))
        raise
    finally:
        await asyncio.gather(*(a.close() for a in agents if a is not None), return_exceptions=True)
    record = JobRecord(
        name=name,
        hosts=spec.hosts,
        launched_at=time.time(),
        script=spec.script,
        python=spec.python,
        cwd=spec.cwd,
        rdzv_endpoint=commands.rdzv_endpoint(*endpoint),
    )
    save_record(record)
    return record


def _job_name(spec: LaunchSpec) -> str:
    if not spec.hosts:
        raise LauncherError("no hosts to launch on")
    if spec.name is not None:
        return commands.check_job_name(spec.name)
    # Unique among the jobs launched from here, even two in the same second.
    base = commands.default_job_name(spec.script)
    taken = {record.name for record in all_records()}
    return next(name for name in (base, *(f"{base}-{n}" for n in range(2, 10_000))) if name not in taken)


async def _connect_and_prepare(
    spec: LaunchSpec,
    name: str,
    ssh: SshOptions,
    agents: list[NodeAgent | None],
    progress: Callable[[str, str], None],
) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(ssh.max_parallel)
    script = commands.script_file(spec.runner, spec.script, spec.torchrun_args)

    async def prepare(index: int) -> dict[str, Any]:
        agent = await open_agent(spec.hosts[index], ssh, gate)
        agents[index] = agent
        want_port = index == 0
        answer = await agent.call(
            "prepare", job=name, cwd=spec.cwd, want_port=want_port, replace=spec.force, script=script
        )
        progress(agent.host.label, "connected")
        return answer

    steps = [prepare(i) for i in range(len(spec.hosts))]
    return await _all_or_nothing(steps, spec.hosts, "launch failed, nothing was started")


async def _all_or_nothing(steps: Sequence[Any], hosts: Sequence[Host], summary: str) -> list[Any]:
    """Run one step per host at once; the first failure cancels the rest and raises JobError."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failures = {}
    for host, task in zip(hosts, tasks, strict=True):
        if task.cancelled():
            continue
        exc = task.exception()
        if isinstance(exc, HostError):
            failures[host.label] = exc.message
        elif exc is not None:
            raise exc
    if failures:
        raise JobError(summary, failures)
    return [task.result() for task in tasks]


async def _roll_back(name: str, agents: Sequence[NodeAgent]) -> None:
    """Remove whatever the failed launch started on the hosts where it began to start."""

    async def kill(agent: NodeAgent) -> None:
        # If that host's agent is gone, its connection went with it, and so did the start.
        with contextlib.suppress(LauncherError):
            await agent.call("kill", job=name, grace=3.0, timeout=30)

    await asyncio.gather(*(kill(a) for a in agents))


def _rendezvous_address(hosts: Sequence[Host], agents: Sequence[NodeAgent | None]) -> str:
    """The first host's address as the other nodes reach it."""
    first = agents[0]
    assert first is not None
    if first.info.get("address"):
        return str(first.info["address"])
    if len(hosts) == 1:
        return "127.0.0.1"
    # The first host is this machine: use the address our SSH connections leave from.
    for agent in agents[1:]:
        if agent is not None and agent.local_address:
            return agent.local_address
    raise LauncherError("cannot tell which address the other hosts reach this machine at")


def _nproc(spec: LaunchSpec, host: Host) -> str:
    if spec.nproc_per_node is not None:
        return spec.nproc_per_node
    return str(host.slots or 1)
