"""How the job stands on this node, from its run directory and the process table."""

from __future__ import annotations

import socket

from launcher.node import failures, hang, logfile
from launcher.node.rundir import RunDir
from launcher.protocol.base import NodeState
from launcher.protocol.messages import NodeStatus


def node_state(run: RunDir) -> NodeState:
    """running, succeeded, failed, killed, lost (the supervisor vanished without a word:
    the node rebooted, or it was SIGKILLed) or unknown (never launched here)."""
    if run.was_killed():
        return "killed"
    ended = run.read_exit()
    if ended is not None:
        return "succeeded" if ended.exit_code == 0 else "failed"
    started = run.read_started()
    if started is None:
        return "unknown"
    if process_alive(started.pid, started.create_time):
        return "running"
    return "lost"


def is_running(job: str) -> bool:
    return node_state(RunDir.of(job)) == "running"


def job_status(job: str) -> NodeStatus:
    """The state, plus what the log tells: the ranks seen here and, after a failure, its cause."""
    run = RunDir.of(job)
    state = node_state(run)
    ended = run.read_exit()
    started = run.read_started()
    records = logfile.read_last_bytes(run.log_path)
    rank_failures, _ = failures.rank_failures(records)
    seen = {r.rank for r in records if r.rank is not None} | set(rank_failures) | set(run.read_ranks())
    return NodeStatus(
        state=state,
        hostname=socket.gethostname(),
        exit_code=ended.exit_code if ended else None,
        signal=ended.signal if ended else None,
        stopped_by=ended.stopped_by if ended else None,
        lost_node=ended.lost_node if ended else None,
        last_heard=ended.last_heard if ended else None,
        started_at=started.time if started else None,
        ended_at=ended.time if ended else None,
        ranks=sorted(seen),
        rank_failures={str(rank): failure for rank, failure in rank_failures.items()},
        restarts=run.restarts(),
        failure=failures.root_cause(records, ended.exit_code if ended else None) if state == "failed" else None,
        interface=_interface(run),
        hang=hang.read_hang(run),
        last_printed={str(r.rank): r.time for r in records if r.rank is not None},
    )


def _interface(run: RunDir) -> str | None:
    """The interface the job's sockets were pinned to (from its spec)."""
    spec = run.read_spec()
    if spec is None:
        return None
    return spec.env.get("NCCL_SOCKET_IFNAME") or spec.env.get("GLOO_SOCKET_IFNAME")


def process_alive(pid: int, create_time: float) -> bool:
    """Whether process ``pid`` is the one that started at ``create_time`` (pids are reused)."""
    import psutil

    try:
        started: float = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    return abs(started - create_time) < 0.01
