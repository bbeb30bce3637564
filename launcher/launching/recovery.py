"""What ``launch --restarts`` does when an attempt ends: the policy, without I/O.

Which host to blame, from the attempt's status:

- a host the others lost (no heartbeat, or its supervisor vanished);
- the host whose rank failed first of a signal (SIGSEGV, SIGBUS, SIGKILL...) or of a
  CUDA/NCCL error (a GPU, its driver or its link);
- nobody, for an ordinary exception: the same hosts try again once; a second ordinary
  failure blames the code, and the job fails as without ``--restarts`` (the restarts left
  are not spent on a bug); nobody for a hang either (its host is unknown: same hosts).

A blamed host is left out for a cooldown that doubles each time it is left out again
(Horovod's blacklist does the same), and its place goes to the first spare not cooling
down, or to a host whose cooldown is over; with none, the job goes on with fewer hosts
while ``--nnodes MIN:MAX`` allows, and fails below MIN, naming every host left out and why.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from launcher.hosts.files import Host
from launcher.job.status import JobStatus, RootCause

COOLDOWN_S = 600.0
"""How long a host first left out is not taken again; doubled at each repeat."""
ORDINARY_LIMIT = 2
"""Ordinary failures (exceptions, exit codes) before the code is blamed, not a host."""

_HOST_FAULT = re.compile(
    r"CUDA error|CUDA driver|cudaError|CUBLAS_STATUS|NCCL error|ncclSystemError|ncclInternalError|"
    r"ncclUnhandledCudaError|uncorrectable ECC|ECC error|Xid|NVLink|illegal memory access|GPU is lost"
)
_NOT_THE_HOST = re.compile(r"out of memory", re.IGNORECASE)
"""A CUDA out-of-memory error is the job's size, not the host's fault."""

Action = Literal["done", "restart", "give_up", "wait"]


@dataclass(frozen=True)
class Verdict:
    """What to do after an attempt: ``done`` (it succeeded or was killed), ``restart``
    (leaving out ``blame`` if named), ``give_up`` (fail the job), ``wait`` (it still runs)."""

    action: Action
    reason: str
    """One line: the attempt's first failure, or why the job ends."""
    blame: str | None = None
    """The label of the host to leave out."""
    ordinary: bool = False
    """The failure counts toward ``ORDINARY_LIMIT``."""


def judge(status: JobStatus, ordinary_before: int) -> Verdict:
    """The verdict on an attempt that no longer runs everywhere (``ordinary_before``: how
    many earlier attempts failed ordinarily)."""
    if status.state in ("succeeded", "killed"):
        return Verdict("done", status.state)
    if status.state in ("running", "unknown"):
        return Verdict("wait", f"the job is {status.state} on some host")
    if status.state == "hung":
        return Verdict("restart", "hung: no rank made progress (its host is unknown: the same hosts again)")
    root = status.root_cause
    if root is None:
        return Verdict("restart", "failed without a cause found (the same hosts again)")
    if root.lost:
        return Verdict("restart", root.exception, blame=root.host)
    if host_fault(root):
        return Verdict("restart", cause_line(root), blame=root.host)
    if ordinary_before + 1 >= ORDINARY_LIMIT:
        return Verdict(
            "give_up", f"the code failed {ORDINARY_LIMIT} times, not a host: {cause_line(root)}", ordinary=True
        )
    return Verdict("restart", f"{cause_line(root)} (the same hosts again, once)", ordinary=True)


def host_fault(root: RootCause) -> bool:
    """A rank ended by a signal, or by a CUDA/NCCL error that is not out-of-memory."""
    if signal_of(root):
        return True
    text = " ".join((root.exception, *root.traceback[-5:]))
    return bool(_HOST_FAULT.search(text)) and not _NOT_THE_HOST.search(text)


def signal_of(root: RootCause) -> str | None:
    """The signal that ended the rank: as torchrun reported it, or from a shell's exit code
    (128 + the signal's number; negative from Python's subprocess)."""
    if root.signal:
        return root.signal
    code = root.exit_code
    number = (
        code - 128 if code is not None and 128 < code <= 128 + 64 else -code if code is not None and code < 0 else None
    )
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def cause_line(root: RootCause) -> str:
    where = root.host if root.rank is None else f"{root.host} rank {root.rank}"
    killer = signal_of(root)
    how = root.exception.strip().splitlines()[0] if root.exception.strip() else ""
    if killer and killer not in how:
        how = f"{how} (killed by {killer})" if how else f"killed by {killer}"
    return f"{where}: {how or f'exit code {root.exit_code}'}"


def leave_out(left_out: Mapping[str, Mapping[str, Any]], label: str, reason: str, now: float) -> dict[str, Any]:
    """``left_out`` with ``label`` left out (again): its cooldown doubles at each repeat."""
    times = int(left_out.get(label, {}).get("times", 0)) + 1
    entry = {"reason": reason, "at": now, "times": times, "until": now + COOLDOWN_S * 2 ** (times - 1)}
    return {**left_out, label: entry}


def cooling(left_out: Mapping[str, Mapping[str, Any]], now: float) -> set[str]:
    """The labels still in their cooldown."""
    return {label for label, entry in left_out.items() if float(entry.get("until", 0)) > now}


class NoHostsLeft(Exception):
    """Fewer hosts than ``--nnodes`` MIN are left; the message names each host left out and why."""


def next_hosts(
    current: Sequence[Host],
    target: int,
    minimum: int,
    spares: Sequence[Host],
    returning: Sequence[Host],
    left_out: Mapping[str, Mapping[str, Any]],
    now: float | None = None,
) -> tuple[tuple[Host, ...], tuple[Host, ...]]:
    """The hosts of the next attempt, and the candidates they took (to remove from the spares).

    ``current``: the hosts of the attempt that ended, blamed ones already removed. Free
    places, up to ``target``, go to ``spares`` (in order), then to ``returning`` hosts
    (left out earlier), each only when not cooling down. NoHostsLeft below ``minimum``.
    """
    now = time.time() if now is None else now
    out = cooling(left_out, now)
    chosen = [h for h in current if h.label not in out]
    taken: list[Host] = []
    for candidate in (*spares, *returning):
        if len(chosen) >= target:
            break
        if candidate.label in out or any(h.label == candidate.label for h in chosen):
            continue
        chosen.append(candidate)
        taken.append(candidate)
    if len(chosen) < minimum:
        why = "; ".join(f"{label}: {entry['reason']}" for label, entry in left_out.items()) or "none left out"
        raise NoHostsLeft(f"{len(chosen)} host(s) left, --nnodes needs {minimum} (left out: {why})")
    return tuple(chosen), tuple(taken)


def nnodes_range(nnodes: str | None, hosts: int) -> tuple[int, int]:
    """``--nnodes`` as (MIN, MAX); without it, exactly the hosts launched."""
    if nnodes is None:
        return hosts, hosts
    low, _, high = nnodes.partition(":")
    return int(low), int(high or low)
