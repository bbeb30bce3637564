"""Status and wait: how a job stands on every host (best effort per host, every host reported)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from launcher.errors import UnreachableError, message_of
from launcher.hosts.files import Host
from launcher.job.records import JobRecord, remember_state
from launcher.job.stack import RollCall, roll_call
from launcher.protocol.messages import NodeStatus, RankFailure, Status, Wait
from launcher.protocol.stack import StackReport
from launcher.transport.agent import DEFAULT_SSH, NodeAgent, SshOptions
from launcher.transport.fanout import ask, for_each_host, reconnecting, report_given_up
from launcher.transport.lost import LostHosts

JobState = Literal["running", "succeeded", "failed", "killed", "hung", "unknown"]
"""``hung``: silent past ``launch --hang-timeout`` (stopped, or left running with ``--on-hang keep``)."""
HostState = Literal["running", "succeeded", "failed", "killed", "lost", "unknown", "unreachable"]
"""``lost``: the host fell silent to the others (heartbeats) or its supervisor vanished (a reboot)."""


@dataclass(frozen=True)
class RankStatus:
    """One global rank of the job."""

    rank: int
    state: str
    """running, succeeded, failed, killed, or ended (its node failed; it exited by itself)."""
    exit_code: int | None = None
    signal: str | None = None


@dataclass(frozen=True)
class RootCause:
    """The first failure of a job: where, which rank, how, and the traceback that explains it."""

    host: str
    rank: int | None
    exit_code: int | None
    signal: str | None
    exception: str
    traceback: tuple[str, ...]
    time: float | None
    lost: bool = False
    """The host fell silent (``exception`` says since when), rather than a rank failing."""
    same_on: tuple[int, ...] = ()
    """The other ranks that failed with the same exception and traceback (shown once)."""


@dataclass(frozen=True)
class HostStatus:
    """The job on one host."""

    host: str
    state: HostState
    exit_code: int | None = None
    error: str | None = None
    """Why the host could not be asked, or why it stopped (another node failed)."""
    started_at: float | None = None
    ended_at: float | None = None
    restarts: int = 0
    ranks: tuple[RankStatus, ...] = ()
    stopped_by: int | None = None
    """The index of the node whose failure stopped this one."""
    interface: str | None = None
    """The interface the job's NCCL and gloo sockets use there, when pinned."""
    last_heard: float | None = None
    """A lost host: when the others last heard from it (epoch seconds)."""
    last_printed: dict[str, float] = field(default_factory=dict)
    """Per rank (its number as text, as in JSON): when it last printed a line (epoch seconds)."""


@dataclass(frozen=True)
class JobStatus:
    """The job on every host, and its first failure."""

    name: str
    state: JobState
    hosts: tuple[HostStatus, ...]
    root_cause: RootCause | None = None
    hang: RollCall | None = None
    """A hung job: where its ranks were when the supervisors took their stacks."""


async def job_status(
    record: JobRecord, ssh: SshOptions = DEFAULT_SSH, answers: Mapping[str, NodeStatus] | None = None
) -> JobStatus:
    """Ask every host how the job stands; a host that cannot be asked is ``unreachable``.

    ``answers``: what the hosts said already, by label; then no host is asked, and one
    missing there is ``unreachable`` (``launch --restarts``: asked as the job ended).
    The state is remembered in the job's local record, for ``launcher list``.
    """
    failures: list[RootCause] = []
    losses: list[tuple[int, float]] = []
    hangs: list[tuple[str, StackReport | str]] = []
    every_failure: list[RankFailure] = []

    async def one(host: Host) -> HostStatus:
        if answers is None:
            answer = await ask(host, ssh, Status(job=record.name))
        elif host.label in answers:
            answer = answers[host.label]
        else:
            raise UnreachableError(host.label, "it did not answer as the job ended")
        if answer.lost_node is not None and answer.last_heard is not None:
            losses.append((answer.lost_node, answer.last_heard))
        every_failure.extend(answer.rank_failures.values())
        if answer.hang is not None:
            hangs.append((host.label, answer.hang.stacks))
        if answer.failure is not None and answer.stopped_by is None:
            failures.append(_root_cause(host.label, answer.failure))
        stopped_by = answer.stopped_by
        stopper = (
            record.hosts[stopped_by].label if stopped_by is not None and stopped_by < len(record.hosts) else "a node"
        )
        return HostStatus(
            host=host.label,
            state=answer.state,
            exit_code=answer.exit_code,
            error=None if stopped_by is None else f"stopped: {_stop_reason(stopper, answer)}",
            started_at=answer.started_at,
            ended_at=answer.ended_at,
            restarts=answer.restarts,
            ranks=_rank_states(answer),
            stopped_by=stopped_by,
            interface=answer.interface,
            last_printed=answer.last_printed,
        )

    results = await for_each_host(record.hosts, one)
    hosts = tuple(
        r if isinstance(r, HostStatus) else HostStatus(h.label, "unreachable", error=message_of(r))
        for h, r in zip(record.hosts, results, strict=True)
    )
    hosts, lost = _mark_lost(hosts, losses)
    root = min([*failures, *lost], key=lambda f: f.time or float("inf"), default=None)
    if root is not None and root.rank is not None:
        root = replace(root, same_on=same_failure(root, every_failure))
    state = overall_state([h.state for h in hosts])
    if record.slurm_job_id is not None and record.last_state == "killed" and state == "failed":
        state = "killed"  # launcher kill's scancel: on the nodes, SLURM's SIGTERM reads as a failure
    order = [h.label for h in record.hosts]
    hangs.sort(key=lambda found: order.index(found[0]))  # in the hosts' order, not their answers'
    hang = roll_call(record.name, hangs) if hangs else None
    if hang is not None and state in ("running", "failed"):
        state, root = "hung", None  # the stop that follows a hang is no failure of its own
    result = JobStatus(record.name, state, hosts, root, hang)
    remember_state(record, result.state)
    return result


def same_failure(root: RootCause, failures: Sequence[RankFailure]) -> tuple[int, ...]:
    """The other ranks whose failure reads as the root cause's: same exception, same traceback."""
    return tuple(
        sorted(
            {
                f.rank
                for f in failures
                if f.rank is not None
                and f.rank != root.rank
                and (f.exception, tuple(f.traceback)) == (root.exception, root.traceback)
            }
        )
    )


def _stop_reason(stopper: str, answer: NodeStatus) -> str:
    if answer.lost_node is not None and answer.last_heard is not None:
        return f"{stopper} lost: no heartbeat since {_clock(answer.last_heard)}"
    return f"{stopper} failed"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _mark_lost(
    hosts: tuple[HostStatus, ...], losses: Sequence[tuple[int, float]]
) -> tuple[tuple[HostStatus, ...], list[RootCause]]:
    """The host the others lost (the one most of them name: a host cut off names node 0),
    or whose supervisor vanished, reads ``lost``; each is a root cause."""
    marked = list(hosts)
    causes = []
    named = Counter(node for node, _ in losses)
    if named:
        node = max(named, key=lambda n: (named[n], -n))
        heard = min(t for n, t in losses if n == node)
        if node < len(marked) and marked[node].state not in ("running", "succeeded", "killed"):
            why = f"lost: no heartbeat since {_clock(heard)}"
            marked[node] = replace(marked[node], state="lost", last_heard=heard, error=why, stopped_by=None)
            causes.append(_lost_cause(marked[node].host, why, heard))
    for host in marked:
        if host.state == "lost" and host.last_heard is None:
            why = "lost: its supervisor vanished without a word (the host rebooted, or it was SIGKILLed)"
            causes.append(_lost_cause(host.host, why, host.started_at))
    return tuple(marked), causes


def _lost_cause(host: str, why: str, when: float | None) -> RootCause:
    return RootCause(host, None, None, None, f"{host} {why}", (), when, lost=True)


def _root_cause(host: str, failure: RankFailure) -> RootCause:
    return RootCause(
        host=host,
        rank=failure.rank,
        exit_code=failure.exit_code,
        signal=failure.signal,
        exception=failure.exception,
        traceback=tuple(failure.traceback),
        time=failure.time,
    )


def _rank_states(answer: NodeStatus) -> tuple[RankStatus, ...]:
    states = []
    for rank in answer.ranks:
        failure = answer.rank_failures.get(str(rank))
        if failure is not None:
            states.append(RankStatus(rank, "failed", failure.exit_code, failure.signal))
        elif answer.state == "failed":
            states.append(RankStatus(rank, "ended"))
        else:
            states.append(RankStatus(rank, answer.state, 0 if answer.state == "succeeded" else None))
    return tuple(states)


SILENT_MIN_S = 60.0
SILENT_RATIO = 10.0


def silent_ranks(result: JobStatus, now: float) -> list[tuple[str, int, float, float]]:
    """``(host, rank, silent for, its peers' median)`` of each running rank that printed but
    has been silent far longer than its peers: over ``SILENT_MIN_S`` and ``SILENT_RATIO``
    times the median silence of the running ranks that printed (three at least: in a job
    where only rank 0 prints, the others are not singled out)."""
    printed = [
        (h.host, r.rank, now - h.last_printed[str(r.rank)])
        for h in result.hosts
        for r in h.ranks
        if r.state == "running" and str(r.rank) in h.last_printed
    ]
    if len(printed) < 3:
        return []
    median = sorted(silent for _, _, silent in printed)[len(printed) // 2]
    limit = max(SILENT_MIN_S, SILENT_RATIO * median)
    return [(host, rank, silent, median) for host, rank, silent in printed if silent > limit]


def overall_state(states: Sequence[str]) -> JobState:
    """One word for the job: a kill or failure anywhere marks the whole job."""
    if "killed" in states:
        return "killed"
    if "failed" in states or "lost" in states:
        return "failed"
    if "running" in states:
        return "running"
    if states and all(s == "succeeded" for s in states):
        return "succeeded"
    return "unknown"


async def wait_for_end(
    record: JobRecord,
    ssh: SshOptions = DEFAULT_SSH,
    on_problem: Callable[[str, str], None] | None = None,
    reconnect_for: float = 300.0,
    then: Callable[[NodeAgent], Awaitable[None]] | None = None,
) -> None:
    """Return once the job no longer runs on any host (or a host stayed out of reach for
    ``reconnect_for`` seconds). One connection per host, which its node answers when
    the job ends there: no new login every poll on nodes busy training. ``then(agent)``
    runs on that connection once the job ended there (``Job.result`` reads the ranks'
    return values on it, without a second login)."""

    lost = LostHosts(len(record.hosts))

    async def one(indexed: tuple[int, Host]) -> None:
        index, host = indexed

        async def session(agent: NodeAgent) -> None:
            ended = await agent.call(Wait(job=record.name), timeout=None)
            lost.named(ended.lost_node)
            if then is not None:
                await then(agent)

        waiting = reconnecting(host, ssh, session, on_problem, reconnect_for)
        await lost.unless_lost(index, host.label, waiting, on_problem)

    indexed = list(enumerate(record.hosts))
    report_given_up(record.hosts, await for_each_host(indexed, one), on_problem)
