"""Measurement 3, kill: time until every process of a running job is verified gone on
every host, and what is left a few seconds later, for ``launcher kill --grace G`` and for
the recipe ``xargs -a hosts -I{} ssh {} tmux kill-session -t JOB``.

Each contender kills a job it started itself: the torchrun job of ``bench/jobs/dist_sleep.py``
with ``--helper``, once every rank has passed its all-reduce. Its ranks end on SIGTERM at
once, so the grace period is never waited out; each rank's helper sits in a session of its
own, where only a kill that looks beyond the tmux session's process tree finds it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from itertools import count

from bench import foreground
from bench.config import Plan
from bench.contenders import Contender, Job, hosts_with_line, installed, launcher_kill, recipe_kill, start
from bench.procs import Proc, is_job_process, run_timed
from bench.results import Sample
from bench.site import Site

CONTENDERS: tuple[Contender, ...] = ("launcher", "xargs", "torchrunx", "deepspeed")
"""torchrunx and deepspeed have no kill command: theirs is Ctrl-C (``foreground.interrupt``)."""
HELPER_MARKER = "bench-helper"  # on the helper's command line (dist_sleep.py)
READY_TIMEOUT_S = 300.0
GONE_TIMEOUT_S = 3.0
"""How long to keep looking for the last process to end (after the grace period)."""
_jobs = count()


def measure_kill(site: Site, plan: Plan, record: Callable[[Sample], None]) -> None:
    contenders = installed(CONTENDERS)
    for rep in range(plan.heavy_repeat):
        for contender in contenders if rep % 2 == 0 else contenders[::-1]:
            number = next(_jobs)
            name = f"bk{number}"
            job = Job(name, "bench/jobs/dist_sleep.py", (name, "--helper"), torchrun=True, port=29500 + number % 1000)
            record(kill_once(site, job, contender, plan, rep))


def kill_once(site: Site, job: Job, contender: Contender, plan: Plan, rep: int) -> Sample:
    if contender in foreground.FOREGROUND:
        return _kill_foreground(site, job, contender, plan, rep)
    # The recipe's job is started with xargs -P 32: how fast it starts is not measured here.
    launched = start(site, job, "launcher" if contender == "launcher" else "xargs -P 32")
    error = None if launched.ok else f"launch failed: {launched.problem()}"
    if error is None and not _wait_ready(site, job, contender):
        error = f"not every rank was ready after {READY_TIMEOUT_S:g} s"
    values: dict[str, float | None] = {}
    if error is None:
        argv = launcher_kill(job, plan.grace) if contender == "launcher" else recipe_kill(site, job, "xargs")
        site.wait_for_sessions_to_end()  # the launch's own SSH sessions are not the kill's
        node_cpu = site.node_cpu_s()
        begin = time.perf_counter()
        killed = run_timed(argv, site.env())
        values["returned_s"] = killed.wall_s
        values["cpu_per_host_s"] = killed.cpu_s / site.n
        # First every process but the helpers (the tmux session's tree: torchrun, its
        # workers), then the helpers too.
        tree_gone = site.wait_until_gone(plan.grace + GONE_TIMEOUT_S, ignore=HELPER_MARKER)
        values["tree_gone_s"] = None if tree_gone is None else time.perf_counter() - begin
        all_gone = site.wait_until_gone(GONE_TIMEOUT_S)
        values["gone_s"] = None if all_gone is None else time.perf_counter() - begin
        # What the hosts spent on the kill: its SSH sessions and agents, and the job's own
        # processes ending (a helper the kill missed sleeps on, at no cost).
        site.wait_for_sessions_to_end()
        values["node_cpu_per_host_s"] = (site.node_cpu_s() - node_cpu) / site.n
        time.sleep(plan.left_after_s)
        left = _left_on_hosts(site)
        values["left"] = sum(left)
        values["left_hosts"] = sum(1 for n in left if n)
        gone_before = _sessions_gone_before(killed.stderr)
        values["sessions_gone_before"] = gone_before
        if not killed.ok and not (contender != "launcher" and gone_before):
            error = f"kill failed: {killed.problem()}"
    # What the kill left (counted above) goes now: waiting for it to end would be in vain.
    site.scrub()
    return Sample("kill", contender, site.n, rep, values, error)


def _kill_foreground(site: Site, job: Job, contender: Contender, plan: Plan, rep: int) -> Sample:
    """torchrunx, deepspeed: the job started in the foreground, ended with Ctrl-C."""
    proc = foreground.start(site, job.name, job.script, job.args, job.port, contender)
    values: dict[str, float | None] = {}
    try:
        error = (
            None if _wait_ready(site, job, contender, proc) else f"not every rank was ready after {READY_TIMEOUT_S:g} s"
        )
        if error is None:
            site.wait_for_sessions_to_end()
            node_cpu = site.node_cpu_s()
            begin = time.perf_counter()
            returned = foreground.interrupt(proc)
            values["returned_s"] = returned
            _gone(site, plan, begin, values)
            site.wait_for_sessions_to_end()
            values["node_cpu_per_host_s"] = (site.node_cpu_s() - node_cpu) / site.n
            _left_values(site, plan, values)
            if returned is None:
                error = f"Ctrl-C did not end {contender} within {foreground.STOP_TIMEOUT_S:g} s (killed)"
    finally:
        foreground.end(proc)
    site.scrub()
    return Sample("kill", contender, site.n, rep, values, error)


def _gone(site: Site, plan: Plan, begin: float, values: dict[str, float | None]) -> None:
    tree_gone = site.wait_until_gone(plan.grace + GONE_TIMEOUT_S, ignore=HELPER_MARKER)
    values["tree_gone_s"] = None if tree_gone is None else time.perf_counter() - begin
    all_gone = site.wait_until_gone(GONE_TIMEOUT_S)
    values["gone_s"] = None if all_gone is None else time.perf_counter() - begin


def _left_values(site: Site, plan: Plan, values: dict[str, float | None]) -> None:
    time.sleep(plan.left_after_s)
    left = _left_on_hosts(site)
    values["left"] = sum(left)
    values["left_hosts"] = sum(1 for n in left if n)


def _sessions_gone_before(stderr: str) -> int:
    """Hosts where ``tmux kill-session`` found the session already ended.

    Expected with torchrun: killing it on the first host takes the rendezvous store
    down, and torchrun on the hosts not yet reached exits on its own.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    gone = [line for line in lines if "no server running" in line or "can't find session" in line]
    return len(gone) if len(gone) == len(lines) else 0


def _wait_ready(site: Site, job: Job, contender: Contender, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while hosts_with_line(site, job, contender, "ready rank=") < site.n:
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(0.2)
    return True


def _left_on_hosts(site: Site) -> list[int]:
    """Per host, the job processes left, seen inside its PID namespace (``TestHost.processes``)."""
    return [
        sum(1 for pid, command in host.processes() if is_job_process(Proc(pid, command), host.init_pid))
        for host in site.cluster.hosts
    ]
