"""The log messages of the wire: a line of output, and the requests that read, tail and follow.

``node/logs.py`` answers them, ``job/logs.py`` asks. Standard library only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

from launcher.protocol.base import Request, Stream


class LogRecord(NamedTuple):
    """One line of a job's output on a node, as ``output.log`` stores it.

    A tuple on purpose: it travels as ``[time, rank, stream, text]``, the most compact
    JSON for the message sent most often.
    """

    time: float
    rank: int | None
    """Global rank, or None for the node's own lines (torchrun, the launcher)."""
    stream: Stream
    text: str


@dataclasses.dataclass(frozen=True)
class LogBatch:
    """Records that passed the filters; ``offset``: where the next read goes on from."""

    records: list[LogRecord]
    offset: int | None = None


@dataclasses.dataclass(frozen=True)
class LogEnd:
    """The last message of ``tail`` and ``follow``."""

    offset: int
    ended: bool = False
    """Follow: the job has ended here and every record has been sent."""
    lost_node: int | None = None
    """Follow, once ended: the node whose silence stopped the job here."""


@dataclasses.dataclass(frozen=True)
class ReadLogs(Request[LogBatch]):
    """One batch of records from ``offset`` on (an answer whose offset has not moved: the end)."""

    op: ClassVar[str] = "logs"
    job: str
    offset: int = 0
    ranks: list[int] | None = None
    stderr_only: bool = False


@dataclasses.dataclass(frozen=True)
class Tail(Request[LogEnd]):
    """The last ``count`` records of each rank, streamed as ``LogBatch``es."""

    op: ClassVar[str] = "tail"
    job: str
    count: int
    ranks: list[int] | None = None
    stderr_only: bool = False


@dataclasses.dataclass(frozen=True)
class Follow(Request[LogEnd]):
    """New records from ``offset`` on, streamed as ``LogBatch``es until the job ends here."""

    op: ClassVar[str] = "follow"
    job: str
    offset: int = 0
    ranks: list[int] | None = None
    stderr_only: bool = False


LOG_ANSWERS: dict[type[Request[Any]], type[Any]] = {ReadLogs: LogBatch, Tail: LogEnd, Follow: LogEnd}
