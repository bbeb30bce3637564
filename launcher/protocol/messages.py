"""The wire between the launching machine and the node agent: every message, typed.

Both sides import this module, and nothing else of each other's; it is standard library
only, so the node pays almost nothing to import it. One JSON object per line:

    node -> launcher   Hello                       first, unasked, when the agent starts
    launcher -> node   {"op": "<op>", ...}         a request (one of the dataclasses below)
    node -> launcher   {"ok": true, ...}           its answer (``registry.ANSWERS[type(request)]``)
                       {"ok": false, "kind", "error"}   a refusal (``Refusal``)
                       {"records": [...], ...}     streaming ops (tail, follow) send
                                                   ``LogBatch`` messages before the answer

``registry.encode_*`` turn a message into its line and ``codec.decode`` checks a decoded JSON value
against a message type, so that neither side reads a field by a string key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from launcher.protocol.base import NodeState, Request
from launcher.protocol.stack import HangRecord
from launcher.protocol.teardown import Teardown as Teardown  # Start's part the supervisor reads alone

# ---------------------------------------------------------------------------- greeting


@dataclasses.dataclass(frozen=True)
class Hello:
    """Who and where the node is: the agent's first line."""

    protocol: int
    version: str
    """The launcher package's version on the node."""
    hostname: str
    address: str | None
    """The address the launching machine reached the node at (sshd's ``SSH_CONNECTION``):
    the one the other nodes should use, even when the hosts file names an ssh alias."""
    python: str
    pid: int
    python_version: str = ""
    """``major.minor.micro`` of the agent's interpreter."""
    torch: str | None = None
    """The torch version installed for that interpreter (read from its ``dist-info``, not
    imported); None: no torch there."""


# ---------------------------------------------------------------------------- answers


@dataclasses.dataclass(frozen=True)
class Probe:
    """One TCP connection a node tried to the rendezvous (``node/network.py``)."""

    address: str
    port: int
    ok: bool | None
    """None: not tried (an address before it answered)."""
    error: str | None = None
    interface: str | None = None
    """The interface this node reaches ``address`` over."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    run_dir: str
    port: int | None = None
    """The rendezvous port (node 0 only), held open until the start."""
    watch_port: int | None = None
    """A free port for the teardown watcher (node 0 only)."""
    candidates: list[str] = dataclasses.field(default_factory=list)
    """Node 0: its addresses the others may reach it at, the likeliest first."""
    probes: list[Probe] = dataclasses.field(default_factory=list)
    """The connections this node tried to the rendezvous, one per candidate address."""
    gpus: int | None = None
    """Processes to run here by default: one per GPU (or MIG device); None when not asked."""
    preset_env: list[str] = dataclasses.field(default_factory=list)
    """Of NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME, those this node's environment sets."""
    cuda_visible: str | None = None
    """The job's CUDA_VISIBLE_DEVICES here: ``--include``'s GPUs, or this node's own
    allocation (its CUDA_VISIBLE_DEVICES), as device ids of this node; None: not narrowed."""
    gpu_notes: list[str] = dataclasses.field(default_factory=list)
    """What the launch should say about this node's GPUs (MIG, a pid it cannot place, a warning)."""


@dataclasses.dataclass(frozen=True)
class Started:
    session: str
    run_dir: str


@dataclasses.dataclass(frozen=True)
class RankFailure:
    """How one rank failed, from torchrun's summary or the rank's own output."""

    rank: int | None
    local_rank: int | None
    exit_code: int | None
    signal: str | None
    exception: str
    traceback: list[str]
    time: float | None
    error_file: str | None = None
    """Where torch elastic's ``@record`` wrote the rank's error, if it did."""


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """The job on one node."""

    state: NodeState
    hostname: str
    exit_code: int | None = None
    signal: int | None = None
    stopped_by: int | None = None
    """The node whose failure stopped this one (teardown)."""
    lost_node: int | None = None
    """The node that fell silent and stopped this one (teardown heartbeats)."""
    last_heard: float | None = None
    """When ``lost_node`` was last heard from (epoch seconds)."""
    started_at: float | None = None
    ended_at: float | None = None
    ranks: list[int] = dataclasses.field(default_factory=list)
    rank_failures: dict[str, RankFailure] = dataclasses.field(default_factory=dict)
    """By global rank (JSON keys are strings)."""
    restarts: int = 0
    failure: RankFailure | None = None
    """The first failure here, when the node failed."""
    interface: str | None = None
    """The job's NCCL_SOCKET_IFNAME here (else GLOO_SOCKET_IFNAME), if set."""
    hang: HangRecord | None = None
    last_printed: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per rank here: when it last printed a line (epoch seconds), as far back as the log is read."""
    """``launch --hang-timeout``: the job fell silent, and where its ranks were here."""


@dataclasses.dataclass(frozen=True)
class LeftProcess:
    pid: int
    command: str


@dataclasses.dataclass(frozen=True)
class KillReport:
    found: int
    """Processes of the job found when the kill began."""
    forced: int
    """Of those and their late children, how many needed SIGKILL."""
    left: list[LeftProcess]
    """Still alive at the end: the kill failed."""
    gpu_holders: list[int]
    """Pids of the job that nvidia-smi still lists as holding GPU memory."""
    state_before: NodeState
    stuck: list[LeftProcess] = dataclasses.field(default_factory=list)
    """Of ``left``, those in uninterruptible sleep (state D): SIGKILL waits on the kernel."""
    gpu_unverified: str | None = None
    """Why ``gpu_holders`` proves nothing (nvidia-smi failed, or lists pids of another pid
    namespace: a container); None when it was checked, or there is no nvidia-smi."""


@dataclasses.dataclass(frozen=True)
class KillAllReport:
    jobs: dict[str, KillReport]


@dataclasses.dataclass(frozen=True)
class Ended:
    state: NodeState
    lost_node: int | None = None
    """The node whose silence stopped the job here (``launch --wait`` stops waiting for it)."""


@dataclasses.dataclass(frozen=True)
class Results:
    """Return values that ranks of ``launcher.run`` left on this node: rank -> base64 pickle."""

    values: dict[str, str]
    more: bool = False
    """Some were left out to keep the line short: ask again, skipping those received."""


# ---------------------------------------------------------------------------- requests


@dataclasses.dataclass(frozen=True)
class Prepare(Request[Prepared]):
    """Check that the job can start here; node 0 also picks free ports."""

    op: ClassVar[str] = "prepare"
    job: str
    cwd: str
    want_port: bool = False
    replace: bool = False
    """Kill a job of the same name that still runs, instead of refusing."""
    script: str | None = None
    """Relative to ``cwd``; must exist (None: SCRIPT is no file, e.g. ``--runner exec``)."""
    port: int | None = None
    """Node 0 with ``want_port``: listen on this port (None: a free one) until the start."""
    probe: list[str] = dataclasses.field(default_factory=list)
    """The other nodes: connect to these addresses of node 0 at ``probe_port``."""
    probe_port: int | None = None
    probe_timeout: float = 3.0
    count_gpus: bool = False
    """Say how many processes this node's GPUs make (no ``--nproc-per-node``, no slots)."""
    need_gpus: bool = False
    """Refuse a node without GPUs (``--nproc-per-node gpu``)."""
    check_gpus: list[int] | None = None
    """Refuse when one of these GPUs (all of them: an empty list) is held by a process
    of no launcher job; None: do not check (``--allow-busy-gpus``)."""
    pick_gpus: list[int] | None = None
    """``--include host:0,1``: the GPUs picked, as positions among those this node offers
    (its own CUDA_VISIBLE_DEVICES when set); answered in ``Prepared.cuda_visible``."""


@dataclasses.dataclass(frozen=True)
class Start(Request[Started]):
    """Start the job's tmux session and wait until its supervisor runs."""

    op: ClassVar[str] = "start"
    job: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    teardown: Teardown | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    """Files for the job, written into the run directory's ``inputs/`` before the command
    starts: name -> content in base64 (``launcher.run`` sends the pickled function here)."""
    hold: float | None = None
    """Hold the command until ``Commit`` arrives, for at most this many seconds, and while
    the agent that started it lives; then end, recording why. None: run it at once."""


@dataclasses.dataclass(frozen=True)
class Commit(Request[Started]):
    """Every host started: run the held command; answered once it runs."""

    op: ClassVar[str] = "commit"
    job: str
    address: str | None = None
    """Where the hosts meet: replaces ``RENDEZVOUS_ADDRESS`` in the held command's argv,
    variables and teardown address (None: the Start had none)."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """More variables for the command, known only now (the interface it reaches the rendezvous over)."""


@dataclasses.dataclass(frozen=True)
class Status(Request[NodeStatus]):
    op: ClassVar[str] = "status"
    job: str


@dataclasses.dataclass(frozen=True)
class Kill(Request[KillReport]):
    op: ClassVar[str] = "kill"
    job: str
    grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL."""
    forget: bool = False
    """A launch rolled back: the run directory of a job that never ran (held, never
    committed) goes too, as if the launch had not come."""


@dataclasses.dataclass(frozen=True)
class KillAll(Request[KillAllReport]):
    op: ClassVar[str] = "kill_all"
    grace: float = 10.0


@dataclasses.dataclass(frozen=True)
class Wait(Request[Ended]):
    """Answered once the job no longer runs here."""

    op: ClassVar[str] = "wait"
    job: str


@dataclasses.dataclass(frozen=True)
class ReadResults(Request[Results]):
    """The ranks' return values (``launcher.run``), but for the ranks in ``skip``."""

    op: ClassVar[str] = "results"
    job: str
    skip: list[int] = dataclasses.field(default_factory=list)


JOB_ANSWERS: dict[type[Request[Any]], type[Any]] = {
    Prepare: Prepared,
    Start: Started,
    Commit: Started,
    Status: NodeStatus,
    Kill: KillReport,
    KillAll: KillAllReport,
    Wait: Ended,
    ReadResults: Results,
}
