"""Launch: start a job on every host, or on none.

A failure on any host, or Ctrl-C, removes what was started on the others. A dry run
shows what each host would run without contacting any.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from launcher.errors import HostError, JobError, JobRunningError, LauncherError
from launcher.hosts.files import Host
from launcher.job.records import JobRecord, load_record, make_records_dir, save_record, unique_job_name
from launcher.launching import commands, plan, rendezvous
from launcher.launching.connect import CodeRecord, connect_check_and_sync
from launcher.launching.plan import NodePlan, dry_plan
from launcher.launching.same_env import check_environment
from launcher.launching.spec import LaunchSpec
from launcher.launching.watch import start_watcher
from launcher.protocol.base import RENDEZVOUS_ADDRESS
from launcher.protocol.messages import Commit, Kill, Prepare, Prepared, Start, Teardown
from launcher.sync.run import SyncProgress
from launcher.transport.agent import NodeAgent, SshOptions, open_agent
from launcher.transport.fanout import all_or_nothing

PREPARE_TIMEOUT_S = 120.0
"""A prepare may run nvidia-smi three times (GPUs, MIG devices, processes), each allowed 30 s
on the node: without persistence mode it takes 1-3 s per GPU to start."""
COMMIT_WITHIN_S = 180.0
"""A started node runs nothing until the launcher commits (every host started). If the
launcher dies first, the node's supervisor ends as soon as the agent that started it does
(the SSH session closed), or, if the launching machine vanished without closing it (a
laptop lid), this many seconds after the last host's start: not torch's 15-minute
rendezvous timeout (``held_for``)."""
START_TIMEOUT_S = 90.0
"""The least a host's start is waited for (a remote one: ``SshOptions.patience``)."""


def held_for(ssh: SshOptions) -> float:
    """How long a started supervisor holds its command for the commit, from its own start.

    The commit carries no deadline and the supervisor hears nothing before it, so its hold
    is sized from the launch's own patience: a host started first waits while the others
    start, each for at most the start's timeout (beyond that the launch fails and rolls
    back), and then ``COMMIT_WITHIN_S`` more: the hold counts from the last host's start.
    """
    return max(START_TIMEOUT_S, ssh.patience) + COMMIT_WITHIN_S


def dry_run(spec: LaunchSpec) -> tuple[str, list[NodePlan]]:
    """The job name and what every host would run; contacts no host."""
    name = _job_name(spec)
    return name, dry_plan(spec, name)


async def launch_job(
    spec: LaunchSpec,
    on_progress: Callable[[str, str], None] | None = None,
    on_sync: Callable[[SyncProgress], None] | None = None,
) -> JobRecord:
    """Start the job on every host, or on none.

    ``on_progress(host, event)`` hears ``connected`` and ``started`` for each host, and
    ``note: <text>`` for what a host says of its GPUs (MIG, a holder it cannot place).
    """
    name = _job_name(spec)
    make_records_dir()  # a state directory open to others, and not ours: refused before any host is asked
    ssh = replace(spec.ssh, python=spec.python)
    progress = on_progress or (lambda host, event: None)
    agents: list[NodeAgent | None] = [None] * len(spec.hosts)
    # Only these may be rolled back: elsewhere a job of the same name may be running already.
    starting: list[NodeAgent] = []
    try:
        # With --sync, every host must hold the code before its prepare checks the script:
        # connect all, compare environments, sync (all or nothing), then prepare and start.
        code = await connect_check_and_sync(spec, ssh, agents, on_sync) if spec.sync_dir else CodeRecord()
        prepared = await _prepare_and_start(spec, name, ssh, agents, starting, progress)
        if spec.sync_dir is None and not spec.allow_mismatch:  # every host has greeted by now
            check_environment([a for a in agents if a is not None])
        meeting = _meeting_point(spec.hosts, agents, prepared)
        endpoint = (meeting.address, meeting.port)

        async def commit(index: int, agent: NodeAgent) -> None:
            env = plan.interface_env(spec, meeting.interfaces[index], prepared[index])
            await agent.call(Commit(job=name, address=meeting.address, env=env), timeout=90)

        # Only now does any command run: a launcher that dies before this line leaves held
        # supervisors, which end when their agent does (or after held_for(ssh)).
        await all_or_nothing(
            [commit(i, a) for i, a in enumerate(agents) if a is not None],
            spec.hosts,
            "launch failed, nothing left running",
        )
    except BaseException:
        await asyncio.shield(_roll_back(name, starting))
        raise
    finally:
        await asyncio.gather(*(a.close() for a in agents if a is not None), return_exceptions=True)
    now = time.time()
    attempt = {"number": spec.attempt, "hosts": [h.label for h in spec.hosts], "started_at": now}
    launched: dict[str, Any] = {
        "hosts": spec.hosts,
        "rdzv_endpoint": commands.rdzv_endpoint(*endpoint),
        "code": code.fingerprint,
        "code_digest": code.digest,
        "code_hosts": code.hosts,
        "attempt": spec.attempt,
    }
    if spec.attempt > 1:  # a restart (launching/controller.py): the job's record goes on
        before = load_record(name)
        record = replace(before, **launched, attempts=(*before.attempts, attempt), last_state="running")
    else:
        record = JobRecord(
            name=name,
            launched_at=now,
            script=spec.script,
            python=spec.python,
            cwd=spec.cwd,
            restarts=spec.restarts,
            spares=spec.spares,
            attempts=(attempt,) if spec.restarts else (),
            **launched,
        )
    save_record(record)
    if spec.restarts and spec.attempt == 1:
        record = await asyncio.to_thread(start_watcher, record, spec)
    return record


def _job_name(spec: LaunchSpec) -> str:
    if not spec.hosts:
        raise LauncherError("no hosts to launch on")
    if spec.name is not None:
        return commands.check_job_name(spec.name)
    return unique_job_name(commands.default_job_name(spec.script))


async def _prepare_and_start(
    spec: LaunchSpec,
    name: str,
    ssh: SshOptions,
    agents: list[NodeAgent | None],
    starting: list[NodeAgent],
    progress: Callable[[str, str], None],
) -> list[Prepared]:
    """Each host on its own: connect (unless connected), prepare, start held; no host waits
    for the others but for the first, whose prepare picks the ports the others probe and
    whose start goes first. The rendezvous address comes with the commit (``RENDEZVOUS_ADDRESS``).

    Of two launches of one name, the one that starts on the first host wins, and the other
    stops before it starts on any other host (no split with no winner). Only hosts in
    ``starting`` are rolled back after a failure: elsewhere a job of that name may run already.
    """
    gate = asyncio.Semaphore(ssh.max_parallel)
    script = commands.script_file(spec.runner, spec.script, spec.torchrun_args)
    loop = asyncio.get_running_loop()
    first_ready: asyncio.Future[Prepared] = loop.create_future()
    first_started: asyncio.Future[None] = loop.create_future()
    watch = spec.teardown and len(spec.hosts) > 1
    secret = secrets.token_hex(32)  # one per launch, the same on every node; only inside Start requests
    failed_starting: set[str] = set()  # hosts whose own start failed (others failed before theirs)

    async def prepare(index: int, agent: NodeAgent) -> Prepared:
        request = Prepare(
            job=name, cwd=spec.cwd, replace=spec.force, script=script, **gpu_checks(spec, spec.hosts[index])
        )
        if index == 0:  # it listens on the rendezvous port from now until its start
            answer = await agent.call(replace(request, want_port=True, port=spec.rdzv_port), PREPARE_TIMEOUT_S)
            if answer.port is None or answer.watch_port is None:
                raise HostError(spec.hosts[0].label, "the first host picked no rendezvous port")
            first_ready.set_result(answer)
            return answer
        # The others connect to it before answering: no launch waits on a dropped port.
        first = await asyncio.shield(first_ready)
        first_address = agents[0].hello.address if agents[0] and agents[0].hello else None
        probe = rendezvous.probe_addresses(first, first_address, agent.local_address)
        return await agent.call(replace(request, probe=probe, probe_port=first.port), PREPARE_TIMEOUT_S)

    async def one(index: int) -> Prepared:
        host = spec.hosts[index]
        agent = agents[index] or await open_agent(host, ssh, gate)
        agents[index] = agent
        answer = await prepare(index, agent)
        progress(host.label, "connected")
        for note in answer.gpu_notes:  # MIG's one process, a GPU held from another pid namespace
            progress(host.label, f"note: {note}")
        first = first_ready.result()
        if index > 0:
            await asyncio.shield(first_started)
        node = plan.plan_node(spec, name, index, (RENDEZVOUS_ADDRESS, first.port or 0), answer.run_dir, answer, None)
        teardown = (
            Teardown(
                node=index,
                address=RENDEZVOUS_ADDRESS,
                port=first.watch_port or 0,
                secret=secret,
                timeout=spec.heartbeat_timeout,
                nodes=len(spec.hosts),
            )
            if watch
            else None
        )
        request = Start(job=name, argv=node.argv, env=node.env, cwd=spec.cwd, teardown=teardown, hold=held_for(ssh))
        if spec.files:  # launcher.run's pickled call, for each node's run directory
            request = replace(request, files=dict(spec.files))
        starting.append(agent)
        try:
            await agent.call(request, timeout=START_TIMEOUT_S)  # a remote agent: at least SshOptions.patience
        except JobRunningError:
            starting.remove(agent)  # another launch of this name owns it there: not ours to remove
            raise
        except HostError:
            failed_starting.add(host.label)
            raise
        if index == 0:
            first_started.set_result(None)
        progress(host.label, "started")
        return answer

    try:
        return await all_or_nothing([one(i) for i in range(len(spec.hosts))], spec.hosts, "launch failed")
    except JobError as exc:
        # No command runs before the commit: a host that failed to connect or prepare started
        # nothing, whatever the others had (held, then removed); one that failed its start may have.
        done = "nothing left running" if failed_starting & set(exc.errors) else "nothing was started"
        raise JobError(f"launch failed, {done}", exc.errors) from None


async def _roll_back(name: str, agents: Sequence[NodeAgent]) -> None:
    """Remove whatever the failed launch started on the hosts where it began to start."""

    async def kill(agent: NodeAgent) -> None:
        # If that host's agent is gone, its connection went with it, and so did the start.
        with contextlib.suppress(LauncherError):
            await agent.call(Kill(job=name, grace=3.0, forget=True), timeout=30)

    await asyncio.gather(*(kill(a) for a in agents))


def _meeting_point(
    hosts: Sequence[Host], agents: Sequence[NodeAgent | None], prepared: Sequence[Prepared]
) -> rendezvous.Rendezvous:
    """Where the hosts meet: the first address every other host reached at prepare."""
    first = prepared[0]
    if len(hosts) == 1 or first.port is None:
        return rendezvous.Rendezvous(_rendezvous_address(hosts, agents), first.port or 0, (None,))
    hello = agents[0].hello if agents[0] is not None else None
    others = [a.local_address for a in agents[1:] if a is not None]
    order = rendezvous.address_order(first.candidates, hello.address if hello else None, *others)
    return rendezvous.choose(hosts, prepared, order)


def gpu_checks(spec: LaunchSpec, host: Host) -> dict[str, Any]:
    """What a host's prepare checks of its GPUs: their number when it sets the processes
    (no ``--nproc-per-node``, no slots), that it has some for ``gpu``, and that no
    program outside launcher holds those the job would use."""
    return {
        "count_gpus": spec.nproc_per_node is None and host.slots is None,
        "need_gpus": spec.nproc_per_node == "gpu",
        "check_gpus": None if spec.allow_busy_gpus else list(host.gpus or ()),
        "pick_gpus": None if host.gpus is None else list(host.gpus),
    }


def _rendezvous_address(hosts: Sequence[Host], agents: Sequence[NodeAgent | None]) -> str:
    """The first host's address as the other nodes reach it."""
    first = agents[0]
    if first is not None and first.hello is not None and first.hello.address:
        return first.hello.address
    if len(hosts) == 1:
        return "127.0.0.1"
    # The first host is this machine: use the address our SSH connections leave from.
    for agent in agents[1:]:
        if agent is not None and agent.local_address:
            return agent.local_address
    raise LauncherError("cannot tell which address the other hosts reach this machine at")
