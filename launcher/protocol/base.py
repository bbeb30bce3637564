"""The wire's fixed points: its version, the names both sides agree on, a request's base.

Standard library only, as everything in ``launcher.protocol``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Generic, Literal, TypeVar

PROTOCOL_VERSION = 4
"""Bumped whenever a message changes; both sides must also run the same launcher version.
3: ``Teardown.secret`` (required: teardown connections authenticate).
4: ``Commit.address`` and ``Commit.env``: a host starts as soon as it is prepared, and the
rendezvous address, known once every host has reached the first, comes with the commit."""

RENDEZVOUS_ADDRESS = "{launcher.rendezvous}"
"""In a ``Start``'s argv, variables and teardown address: where the hosts meet, unknown
while hosts are still being prepared. The node puts ``Commit.address`` in its place."""

JOB_MARKER = "LAUNCHER_JOB"
"""Environment variable set to the job name in every process of a job.

Children inherit it across double forks and ``setsid``, so ``kill`` finds processes that
left the tmux session's process tree; matching it exactly never touches another job.
"""

ATTEMPT_VARIABLE = "LAUNCHER_ATTEMPT"
"""Set in every process of a job to its attempt: 1 at launch, 2 after the first restart
(``launch --restarts``), and so on. A restartable script resumes from its checkpoint when
it is above 1 (``launcher.context().attempt``)."""

RANK_PREFIX_TEMPLATE = "\x1e${rank}\x1f"
"""torchrun's ``TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE``: each worker line arrives as
``RS <global rank> US <text>``. Control characters cannot be confused with output."""

SESSION_PREFIX = "launcher-"
"""Every job's tmux session is named ``launcher-<job>``."""


AGENT_MODULE = "launcher.node"
"""``python -P -m launcher.node serve`` starts the agent."""

RUN_DIR_VARIABLE = "LAUNCHER_RUN_DIR"
"""Set in every process of a job to the node's run directory (``launcher.run``'s workers
read their function there and write their return values there)."""

RESULT_LIMIT = 8 << 20
"""Most bytes of one rank's pickled return value (``ReadResults`` sends it in one line)."""
CALL_MODULE = "launcher.node.call_function"
"""What torchrun runs (``--module``) on every rank of a function job (``launcher.run``)."""
CALL_FILE = "call.pkl"
"""In the run directory's ``inputs/``: the pickled ``(function, args, kwargs)``."""


IFNAME_VARIABLES = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
"""The variables that pin NCCL's and gloo's sockets to one interface: the launch sets them
(``launching/rendezvous.py``) unless a node has them already (``node/preflight.py`` says which)."""


def address_reached(ssh_connection: str) -> str | None:
    """The address a client reached this host at, from sshd's ``SSH_CONNECTION`` value
    (``client_ip client_port server_ip server_port``); None without one."""
    words = ssh_connection.split()
    return words[2] if len(words) == 4 else None


def session_name(job: str) -> str:
    """The tmux session a job runs in, on every node."""
    return SESSION_PREFIX + job


A = TypeVar("A")
Stream = Literal["o", "e"]
NodeState = Literal["running", "succeeded", "failed", "killed", "lost", "unknown"]
"""``lost``: the supervisor vanished without a word (its host rebooted, or it was SIGKILLed)."""
RefusalKind = Literal[
    "bad_request",
    "workdir_missing",
    "script_missing",
    "tmux_missing",
    "job_running",
    "start_failed",
    "gpus_busy",
    "no_gpus",
    "port_busy",
    "sync_failed",
    "internal",
]
"""Why a node refused a request; the launching side raises one error class per kind."""


@dataclasses.dataclass(frozen=True)
class Refusal:
    """The node could not carry out a request."""

    kind: RefusalKind
    error: str


class Request(Generic[A]):
    """A request whose answer is an ``A``; ``op`` names it on the wire."""

    op: ClassVar[str]
