"""The job's processes on this node: find them by their marker, end them, verify (psutil).

A process belongs to a job when its environment carries ``LAUNCHER_JOB=<job>``: children
inherit it across double forks and ``setsid``, so nothing escapes by leaving the tmux
session's process tree, and matching it exactly never touches another job. The supervisor,
forked from the agent without it (``detach.py``), is known by the pid and create time it
recorded in the run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import Any

from launcher.node import nvidia_smi, status, tmux
from launcher.node.rundir import RunDir
from launcher.protocol.base import JOB_MARKER
from launcher.protocol.messages import KillAllReport, KillReport, LeftProcess
from launcher.protocol.paths import runs_dir

_SWEEPS = 5
"""Processes may fork while we wait: SIGKILL rounds until one finds nothing new."""


def job_processes(job: str) -> list[Any]:
    """Every live process of this user whose environment carries the job's marker, and the
    job's supervisor."""
    import psutil

    me = os.getpid()
    uid = os.getuid()
    found = []
    forked = RunDir.of(job).read_supervisor()
    if forked is not None and forked.pid != me and status.process_alive(forked.pid, forked.create_time):
        with contextlib.suppress(psutil.Error):
            supervisor = psutil.Process(forked.pid)
            if supervisor.status() != psutil.STATUS_ZOMBIE:
                found.append(supervisor)
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(JOB_MARKER) == job and proc not in found:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill(job: str, grace: float, forget: bool = False) -> KillReport:
    """End every process of the job here: SIGTERM, ``grace`` seconds, SIGKILL, verify.
    ``forget``: a rolled-back launch; a run directory whose command never ran is removed."""
    run = RunDir.of(job)
    before = status.node_state(run)
    procs = job_processes(job)
    if procs and run.exists() and not run.has_ended():
        run.mark_killed()
    for proc in procs:
        send_signal(proc, signal.SIGTERM)
    alive = _wait_gone(procs, grace)
    forced: set[int] = set()
    stuck: dict[int, Any] = {}  # in state D after a SIGKILL: waiting on them is waiting on the kernel
    for _ in range(_SWEEPS):
        survivors = [p for p in alive + [p for p in job_processes(job) if p not in alive] if p.pid not in stuck]
        if not survivors:
            break
        for proc in survivors:
            send_signal(proc, signal.SIGKILL)
            forced.add(proc.pid)
        alive = _wait_gone(survivors, 2.0)
        stuck.update((p.pid, p) for p in alive if _in_disk_sleep(p))
        alive = [p for p in alive if p.pid not in stuck]
    with contextlib.suppress(tmux.TmuxMissing):
        tmux.kill_session(job)
    left = [LeftProcess(p.pid, _cmdline(p)) for p in job_processes(job)]
    if forget and not left and run.exists() and not run.is_committed():
        run.remove()
    gpu, unverified = gpu_holders({p.pid for p in procs} | forced)
    blocked = [p for p in left if p.pid in stuck and _in_disk_sleep(stuck[p.pid])]
    return KillReport(
        found=len(procs),
        forced=len(forced),
        left=left,
        gpu_holders=gpu,
        state_before=before,
        stuck=blocked,
        gpu_unverified=unverified,
    )


def kill_all(grace: float) -> KillAllReport:
    """Kill every job of launcher running here: those with a live supervisor or session."""
    mine = runs_dir().glob(f"*/{socket.gethostname()}")
    names = {p.parent.name for p in mine if status.node_state(RunDir(p)) == "running"}
    names |= tmux.job_sessions()
    return KillAllReport(jobs={name: kill(name, grace) for name in sorted(names)})


def gpu_holders(pids: set[int]) -> tuple[list[int], str | None]:
    """Which of ``pids`` nvidia-smi still lists as holding GPU memory, and why that list
    proves nothing when it does not (None: checked, or no nvidia-smi)."""
    if not pids:
        return [], None
    output = nvidia_smi.run(["--query-compute-apps=pid", "--format=csv,noheader"])
    if output.error == "no nvidia-smi" or output.no_devices:
        return [], None
    if output.error is not None:
        return [], output.error
    listed = {int(word) for row in output.rows for word in row.split() if word.isdigit()}
    held = sorted(pids & listed)
    # The driver reports pids of the host's namespace. Here on the host, the job's own pids
    # match as they are; a listed pid with no process here means this is a container, whose
    # job pids the driver numbers otherwise: those could be the job's, or not.
    unseen = sorted(pid for pid in listed - pids if not os.path.exists(f"/proc/{pid}"))
    if unseen and not held:
        shown = ", ".join(map(str, unseen[:8]))
        return [], f"not verifiable in a container: nvidia-smi lists pid(s) {shown}, not processes here"
    return held, None


def send_signal(proc: Any, signum: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc.send_signal(signum)


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Those of ``procs`` still alive after at most ``timeout`` seconds.

    A zombie counts as gone: it holds no memory, GPU or port, and its parent may not
    reap it before the end of the kill (psutil's ``wait_procs`` would wait for that).
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _in_disk_sleep(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.status() == psutil.STATUS_DISK_SLEEP)
    except psutil.Error:
        return False


def _cmdline(proc: Any) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
