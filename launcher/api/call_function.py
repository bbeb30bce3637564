"""Functions as jobs (``launcher.run``/``submit``): the pickled call out, the ranks' outcomes back.

The call ``(fn, args, kwargs)`` is pickled with cloudpickle here, before any host is
contacted, and travels to every node with ``Start.files``; each rank's worker
(``node/call_function.py``) leaves its outcome in the node's run directory, and
``ReadResults`` brings them back. Values never pass through log text.

Limits: the pickled call and each rank's pickled return value are at most 8 MiB
(``PAYLOAD_LIMIT``, ``protocol.RESULT_LIMIT``); bigger data belongs in a file.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from launcher.errors import JobFailed, NotPicklableError, UsageError
from launcher.job.result import JobResult, job_failed
from launcher.protocol.base import RESULT_LIMIT
from launcher.protocol.messages import ReadResults
from launcher.transport.agent import NodeAgent

PAYLOAD_LIMIT = RESULT_LIMIT


def pickle_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """The call, pickled; NotPicklableError naming the part that cannot be pickled."""
    import cloudpickle

    if not callable(fn):
        raise UsageError(f"run() and submit() take a function first, got {type(fn).__name__}")
    try:
        data: bytes = cloudpickle.dumps((fn, tuple(args), dict(kwargs)))
    except Exception as exc:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError...
        raise _what_fails(fn, args, kwargs, exc) from None
    if len(data) > PAYLOAD_LIMIT:
        raise UsageError(
            f"the pickled function and arguments take {len(data) / 2**20:.1f} MiB, over the "
            f"{PAYLOAD_LIMIT >> 20} MiB limit: pass big data as a file path instead"
        )
    return data


def _what_fails(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception) -> UsageError:
    import cloudpickle

    parts: list[tuple[str, Any]] = [(f"the function {getattr(fn, '__qualname__', repr(fn))}", fn)]
    parts += [(f"args[{i}] (a {type(value).__name__})", value) for i, value in enumerate(args)]
    parts += [(f"keyword argument {key!r} (a {type(value).__name__})", value) for key, value in kwargs.items()]
    for what, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception as inner:  # noqa: BLE001 - as above
            return NotPicklableError(what, describe(inner))
    return NotPicklableError("the call", describe(exc))


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class RankOutcome:
    """What one rank of a function job returned or raised."""

    host: str
    rank: int
    ok: bool
    value: Any = None
    exception: str = ""
    traceback: tuple[str, ...] = ()
    time: float | None = None


async def read_outcomes(agent: NodeAgent, job: str) -> dict[int, RankOutcome]:
    """The outcomes of the ranks that ran on the agent's host (several answers if they are big)."""
    found: dict[int, bytes] = {}
    while True:
        answer = await agent.call(ReadResults(job=job, skip=sorted(found)))
        found.update({int(rank): base64.b64decode(data) for rank, data in answer.values.items()})
        if not answer.more or not answer.values:
            return {rank: _outcome(agent.host.label, rank, data) for rank, data in found.items()}


def _outcome(host: str, rank: int, data: bytes) -> RankOutcome:
    try:
        # cloudpickle writes plain pickles (that may name cloudpickle's helpers).
        raw = pickle.loads(data)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything a class's code raises
        return RankOutcome(host, rank, False, exception=f"its return value cannot be unpickled here: {describe(exc)}")
    if raw.get("ok"):
        return RankOutcome(host, rank, True, value=raw.get("value"))
    return RankOutcome(
        host,
        rank,
        False,
        exception=str(raw.get("exception")),
        traceback=tuple(raw.get("traceback") or ()),
        time=raw.get("time"),
    )


def values_or_raise(
    result: JobResult, outcomes: Mapping[int, RankOutcome], unreadable: Mapping[str, str]
) -> dict[int, Any]:
    """Each global rank's return value, or JobFailed naming the first rank that raised
    (else a host whose results could not be read, else how the job ended, else a rank
    that returned nothing)."""
    errors = sorted((o for o in outcomes.values() if not o.ok), key=lambda o: (o.time or float("inf"), o.rank))
    if errors:
        first = errors[0]
        raise JobFailed(result.name, first.host, first.rank, first.exception, first.traceback, result=result)
    for host, message in unreadable.items():
        raise JobFailed(result.name, host, None, f"cannot read the results: {message}", result=result)
    if result.state != "succeeded":
        raise job_failed(result)
    for rank in result.ranks:
        if rank not in outcomes:
            raise JobFailed(result.name, result.host_of(rank), rank, "the rank returned no result", result=result)
    return {rank: outcomes[rank].value for rank in sorted(outcomes)}
