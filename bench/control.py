"""Measurement 3b, status and kill of the light job: ``launcher status NAME`` and then
``launcher kill NAME`` on a light job the launcher started, with the wall time, the
launching side's CPU and the hosts' CPU (node CPU) per host of each command.

Node CPU is counted as for a launch (``Site.node_cpu_s``): everything under each host's
sshd, from just before the command until its SSH sessions have ended on every host (and,
for the kill, until the job's processes are gone). The job itself runs meanwhile: a
sleeping script and its supervisor, whose own use over one second of doing nothing is
recorded too (``idle_node_cpu_per_host_s``), so that it can be told apart.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from itertools import count

from bench.config import Plan
from bench.contenders import Job, hosts_running, launcher_kill, launcher_status, start
from bench.procs import Run, run_timed
from bench.results import Sample
from bench.site import Site

RUNNING_WITHIN_S = 30.0
GONE_TIMEOUT_S = 3.0
IDLE_S = 1.0
_jobs = count()


def measure_control(site: Site, plan: Plan, record: Callable[[Sample], None]) -> None:
    for rep in range(plan.repeat):
        try:
            samples = control_once(site, plan, rep)
        except Exception as error:  # noqa: BLE001 - at 253 hosts a failed run is counted, not fatal
            reason = f"{type(error).__name__}: {error}"
            samples = [Sample(m, "launcher", site.n, rep, {}, reason) for m in ("status-light", "kill-light")]
            site.scrub()
        for sample in samples:
            record(sample)


def control_once(site: Site, plan: Plan, rep: int) -> list[Sample]:
    name = f"bc{next(_jobs)}"
    job = Job(name, "bench/jobs/sleeper.py", (name,))
    launched = start(site, job, "launcher")
    problem = None if launched.ok else f"launch failed: {launched.problem()}"
    if problem is None and _wait_running(site, job) != site.n:
        problem = f"the job did not run on every host within {RUNNING_WITHIN_S:g} s"
    if problem is not None:
        site.scrub()
        return [Sample(m, "launcher", site.n, rep, {}, problem) for m in ("status-light", "kill-light")]
    site.wait_for_sessions_to_end()
    idle = site.node_cpu_s()
    time.sleep(IDLE_S)
    idle = (site.node_cpu_s() - idle) / IDLE_S / site.n

    before = site.node_cpu_s()
    status = run_timed(launcher_status(job), site.env())
    site.wait_for_sessions_to_end()
    values = _costs(status, site, site.node_cpu_s() - before)
    values["idle_node_cpu_per_host_s"] = idle
    status_sample = Sample("status-light", "launcher", site.n, rep, values, _status_problem(status, site))

    before = site.node_cpu_s()
    killed = run_timed(launcher_kill(job, plan.grace), site.env())
    gone = site.wait_until_gone(plan.grace + GONE_TIMEOUT_S)
    site.wait_for_sessions_to_end()
    values = _costs(killed, site, site.node_cpu_s() - before)
    values["gone_s"] = None if gone is None else killed.wall_s + gone
    values["left"] = float(_left(site))
    error = None if killed.ok else f"kill failed: {killed.problem()}"
    if error is None and values["left"]:
        error = f"{values['left']:g} job process(es) left after the kill"
    site.scrub()
    return [status_sample, Sample("kill-light", "launcher", site.n, rep, values, error)]


def _costs(run: Run, site: Site, node_cpu: float) -> dict[str, float | None]:
    return {
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "cpu_per_host_s": run.cpu_s / site.n,
        "node_cpu_per_host_s": node_cpu / site.n,
    }


def _status_problem(status: Run, site: Site) -> str | None:
    if not status.ok:
        return f"status failed: {status.problem()}"
    lines = [line for line in status.stdout.splitlines() if "running" in line]
    missing = [h for h in site.hosts if not any(re.search(rf"\b{re.escape(h)}\b", line) for line in lines)]
    if missing:
        return f"status does not show {len(missing)} host(s) running, e.g. {missing[0]}"
    return None


def _wait_running(site: Site, job: Job) -> int:
    deadline = time.monotonic() + RUNNING_WITHIN_S
    while (running := hosts_running(site, job)) < site.n and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def _left(site: Site) -> int:
    return sum(len(procs) for procs in site.job_processes().values())
