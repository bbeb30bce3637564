"""Measurement 1, launch: time until the command returns with the job's session running
on every host, for every contender, with the light job and with the torchrun job."""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import count

from bench import foreground
from bench.config import HEAVY_MAX_HOSTS, Plan
from bench.contenders import Contender, Job, hosts_running, installed, start
from bench.results import Sample
from bench.site import Site

CONTENDERS: tuple[Contender, ...] = ("launcher", "xargs", "xargs -P 32", "pdsh", "floor", "torchrunx", "deepspeed")
RUNNING_WITHIN_S = 30.0
_jobs = count()


def measure_launch(site: Site, plan: Plan, record: Callable[[Sample], None]) -> None:
    # Above HEAVY_MAX_HOSTS, the light job only (see bench/config.py).
    for torchrun in (False, True) if site.n <= HEAVY_MAX_HOSTS else (False,):
        measure = "launch-torchrun" if torchrun else "launch-light"
        contenders = installed(CONTENDERS)
        if site.n > HEAVY_MAX_HOSTS:
            # Their light job imports torch on every host too (torchrunx's agent, deepspeed's
            # node launcher): at 64 hosts and more, minutes of both cores per run.
            contenders = tuple(c for c in contenders if c not in foreground.FOREGROUND)
        for rep in range(plan.launch_repeats(site.n, torchrun)):
            # A different order each time: no contender always follows the same one.
            shift = rep % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                job = _job(torchrun)
                try:
                    sample = launch_once(site, job, contender, measure, rep)
                except Exception as error:  # noqa: BLE001 - at 253 hosts a failed run is counted, not fatal
                    sample = Sample(measure, contender, site.n, rep, {}, f"{type(error).__name__}: {error}")
                    site.scrub()
                record(sample)


def launch_once(site: Site, job: Job, contender: Contender, measure: str, rep: int) -> Sample:
    if contender in foreground.FOREGROUND:
        return _launch_foreground(site, job, contender, measure, rep)
    node_cpu = site.node_cpu_s()
    run = start(site, job, contender)
    # Untimed from here on. The sessions' time is accounted once sshd has reaped them.
    site.wait_for_sessions_to_end()
    node_cpu = site.node_cpu_s() - node_cpu
    running = site.n if contender == "floor" or not run.ok else _wait_running(site, job)
    # The runner's scrub, not each contender's own kill (measured in kill.py): the torchrun
    # job's 2N processes are importing torch, and stopping them over SSH took 15-20 s at 32 hosts.
    site.scrub()
    error = None
    if not run.ok:
        error = run.problem()
    elif running != site.n:
        error = f"the job ran on {running} of {site.n} hosts after the command returned"
    values: dict[str, float | None] = {
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "cpu_per_host_s": run.cpu_s / site.n,
        "node_cpu_per_host_s": node_cpu / site.n,
    }
    return Sample(measure, contender, site.n, rep, values, error)


def _launch_foreground(site: Site, job: Job, contender: Contender, measure: str, rep: int) -> Sample:
    """torchrunx, deepspeed: from Enter until the job runs on every host; the command stays."""
    node_cpu = site.node_cpu_s()
    begin = time.perf_counter()
    proc = foreground.start(site, job.name, job.script, job.args, job.port, contender)
    try:
        deadline = time.monotonic() + RUNNING_WITHIN_S
        while (running := foreground.hosts_running(site, job.name, contender)) < site.n:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - begin
        cpu = foreground.cpu_s(proc)
        node_cpu = site.node_cpu_s() - node_cpu
        exited = proc.poll()
    finally:
        foreground.interrupt(proc)
    site.scrub()
    error = None
    if running != site.n:
        how = f"it exited with {exited}" if exited is not None else f"after {RUNNING_WITHIN_S:g} s"
        error = f"the job ran on {running} of {site.n} hosts ({how})"
    values: dict[str, float | None] = {
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_per_host_s": cpu / site.n,
        "node_cpu_per_host_s": node_cpu / site.n,
    }
    return Sample(measure, contender, site.n, rep, values, error)


def _wait_running(site: Site, job: Job) -> int:
    """Hosts running the job, given time: tmux returns before its pane's shell has read
    ~/.bashrc and exec'd the job (the launcher returns after)."""
    deadline = time.monotonic() + RUNNING_WITHIN_S
    while (running := hosts_running(site, job)) < site.n and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def _job(torchrun: bool) -> Job:
    number = next(_jobs)
    if torchrun:
        name = f"bl-t{number}"
        return Job(name, "bench/jobs/dist_sleep.py", (name,), torchrun=True, port=29500 + number % 1000)
    name = f"bl-l{number}"
    return Job(name, "bench/jobs/sleeper.py", (name,))
