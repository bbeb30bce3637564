"""A launch, a status and a kill measured on the launching side, for ``sim_hosts.py``'s hosts.

``measure_launch`` runs ``launch_job`` (``--runner exec sleep 600``), then ``job_status``
and ``kill_job``, in this process, recording per phase its wall time, this process's CPU
(user + system, ``getrusage``) and the most open files seen; and this process's peak RSS.
The phases of a launch are milestones: every host prepared (``connected``), every host
started (held), every host committed and every connection closed (``launch_job`` returned).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.hosts.files import Host


@dataclass
class Phase:
    name: str
    wall: float
    cpu: float
    """User + system seconds of this process (``getrusage``)."""


@dataclass
class Measurement:
    hosts: int
    phases: list[Phase] = field(default_factory=list)
    baseline_fds: int = 0
    peak_fds: int = 0
    """The most open files seen (sampled every 0.2 s, and at each phase's end)."""
    rss_before_mb: float = 0.0
    """This process's resident memory as the launch begins (its imports, the test's keys)."""
    peak_rss_mb: float = 0.0
    """This process's peak resident memory (``ru_maxrss``): its whole life, imports included."""
    status_states: Counter[str] = field(default_factory=Counter)
    killed: int = 0


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def resident_mb() -> float:
    """This process's resident memory now (``VmRSS``)."""
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
    return int(kib) / 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure_launch(hosts: tuple[Host, ...], max_parallel: int, name: str = "sim") -> Measurement:
    """Launch ``name`` on ``hosts`` (``--runner exec sleep``), ask its status, kill it."""
    from launcher.job.kill import kill_job
    from launcher.job.status import job_status
    from launcher.launching.spec import LaunchSpec
    from launcher.launching.start import launch_job
    from launcher.transport.agent import SshOptions

    result = Measurement(hosts=len(hosts), baseline_fds=open_files(), rss_before_mb=resident_mb())
    ssh = SshOptions(max_parallel=max_parallel, patience=600.0)
    spec = LaunchSpec(script="sleep", script_args=("600",), hosts=hosts, name=name, runner="exec", cwd="/tmp", ssh=ssh)
    mark = [time.monotonic(), _cpu()]

    def end_phase(phase: str) -> None:
        now, cpu = time.monotonic(), _cpu()
        result.phases.append(Phase(phase, now - mark[0], cpu - mark[1]))
        mark[:] = [now, cpu]
        result.peak_fds = max(result.peak_fds, open_files())

    events: Counter[str] = Counter()

    def progress(host: str, event: str) -> None:
        events[event] += 1
        if events[event] == len(hosts) and event in ("connected", "started"):
            end_phase({"connected": "connect+prepare", "started": "start"}[event])

    async def sample() -> None:
        while True:
            result.peak_fds = max(result.peak_fds, open_files())
            await asyncio.sleep(0.2)  # the launch holds each connection from its prepare to the commit

    sampler = asyncio.create_task(sample())
    try:
        record = await launch_job(spec, on_progress=progress)
        end_phase("commit+close")
        status = await job_status(record, ssh)
        end_phase("status")
        kills = await kill_job(record, grace=1.0, ssh=ssh)
        end_phase("kill")
    finally:
        sampler.cancel()
    result.status_states = Counter(h.state for h in status.hosts)
    result.killed = sum(k.verified for k in kills)
    result.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def with_home(home: Path) -> Callable[[], None]:
    """Point this process's ~ (asyncssh's ~/.ssh) and launcher's state at ``home``; returns the undo."""
    saved = {k: os.environ.get(k) for k in ("HOME", "XDG_STATE_HOME", "SSH_AUTH_SOCK")}
    os.environ.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"))
    os.environ.pop("SSH_AUTH_SOCK", None)

    def undo() -> None:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    return undo
