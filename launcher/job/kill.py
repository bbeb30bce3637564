"""Kill: end a job on every host and verify it there (best effort per host, every host reported)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.errors import message_of
from launcher.hosts.files import Host
from launcher.job.records import JobRecord, load_record, remember_state
from launcher.job.watcher import stop_watcher
from launcher.protocol.messages import Kill, KillAll, KillReport, LeftProcess
from launcher.transport.agent import DEFAULT_SSH, SshOptions
from launcher.transport.fanout import ask, for_each_host


@dataclass(frozen=True)
class HostKill:
    """How the kill went on one host."""

    host: str
    verified: bool
    """True when nothing of the job is left on the host."""
    message: str


async def kill_job(record: JobRecord, grace: float = 10.0, ssh: SshOptions = DEFAULT_SSH) -> list[HostKill]:
    """End the job on every host (SIGTERM, ``grace`` seconds, SIGKILL) and verify nothing is left.

    A job launched with ``--restarts`` first loses its watcher, so that no restart races
    the kill. A job that SLURM runs (``launcher sbatch --submit``) is first cancelled with scancel,
    which SlurmError reports when refused; then the same verification runs on every host.
    """
    if record.restarts:
        # It rolls back a restart it is making; one it made runs on the hosts its record names now.
        await asyncio.to_thread(stop_watcher, load_record(record.name))
        record = load_record(record.name)
    if record.slurm_job_id is not None:
        from launcher.job import slurm as slurm_jobs

        await asyncio.to_thread(slurm_jobs.cancel, record.slurm_job_id, grace + 30)

    async def one(host: Host) -> HostKill:
        answer = await ask(host, ssh, Kill(job=record.name, grace=grace), timeout=grace + 60)
        kill = _host_kill(host.label, answer)
        if record.slurm_job_id is not None and kill.verified and answer.found == 0:
            return HostKill(host.label, True, f"ended by scancel (SLURM job {record.slurm_job_id}); none left")
        return kill

    results = await for_each_host(record.hosts, one)
    kills = [
        r if isinstance(r, HostKill) else HostKill(h.label, False, message_of(r))
        for h, r in zip(record.hosts, results, strict=True)
    ]
    if all(k.verified for k in kills):
        remember_state(record, "killed")
    return kills


async def kill_all_jobs(hosts: Sequence[Host], grace: float = 10.0, ssh: SshOptions = DEFAULT_SSH) -> list[HostKill]:
    """Kill every launcher job running on ``hosts``, whoever launched it."""

    async def one(host: Host) -> HostKill:
        answer = await ask(host, ssh, KillAll(grace=grace), timeout=grace + 120)
        kills = {name: _host_kill(host.label, result) for name, result in answer.jobs.items()}
        if not kills:
            return HostKill(host.label, True, "no job running")
        verified = all(k.verified for k in kills.values())
        return HostKill(host.label, verified, "; ".join(f"{name}: {k.message}" for name, k in kills.items()))

    results = await for_each_host(hosts, one)
    return [
        r if isinstance(r, HostKill) else HostKill(h.label, False, message_of(r))
        for h, r in zip(hosts, results, strict=True)
    ]


def stuck_message(stuck: Sequence[LeftProcess]) -> str:
    """Processes SIGKILL cannot end yet: uninterruptible sleep, a hung disk, NFS or driver."""
    names = ", ".join(f"{p.command.split(' ', 1)[0].rsplit('/', 1)[-1] or '?'} (pid {p.pid})" for p in stuck)
    return (
        f"stuck in uninterruptible sleep (state D), SIGKILL waits on the kernel: {names};"
        " it ends when its I/O returns (a hung disk, NFS or GPU driver), else only a reboot ends it"
    )


def _host_kill(label: str, answer: KillReport) -> HostKill:
    if answer.gpu_holders:
        pids = ", ".join(str(pid) for pid in answer.gpu_holders)
        return HostKill(label, False, f"nvidia-smi still lists GPU memory held by pid(s) {pids}")
    if answer.stuck:
        return HostKill(label, False, stuck_message(answer.stuck))
    if answer.left:
        pids = ", ".join(str(p.pid) for p in answer.left)
        return HostKill(label, False, f"{len(answer.left)} process(es) still alive: {pids}")
    if answer.found == 0:
        return HostKill(label, True, f"already gone (the job had {answer.state_before})")
    forced = f", {answer.forced} needed SIGKILL" if answer.forced else ""
    # The process table is clean; the GPU side may not be provable (a container's pids).
    gpu = f"; GPU memory {answer.gpu_unverified}" if answer.gpu_unverified else ""
    return HostKill(label, True, f"killed {answer.found} process(es){forced}; none left{gpu}")
