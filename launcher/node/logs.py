"""The log requests: read a batch, the last N lines of each rank, follow, wait for the end.

Filters (``--rank``, ``--stderr``) apply here, so only the lines shown cross the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from launcher.node import logfile, status
from launcher.node.changes import SAFETY_POLL_S, DirectoryWatch
from launcher.node.errors import Idle, sleep_or_wake
from launcher.node.rundir import RunDir
from launcher.protocol.logs import Follow, LogBatch, LogEnd, LogRecord, ReadLogs, Tail
from launcher.protocol.messages import Ended, Wait

Emit = Callable[[LogBatch], None]
"""Sends one message of a streamed answer."""

FOLLOW_POLL_S = 0.05
WAIT_POLL_S = 0.25


def read_logs(request: ReadLogs) -> LogBatch:
    """Complete records from the offset on, at most one batch's worth, those that pass the
    filters (an empty list with a new offset means: read on; the same offset: the end)."""
    records, offset = logfile.read_forward(RunDir.of(request.job).log_path, request.offset)
    keep = logfile.record_filter(request.ranks, request.stderr_only)
    return LogBatch(records=[r for r in records if keep(r)], offset=offset)


def tail_logs(request: Tail, emit: Emit) -> LogEnd:
    """The last ``count`` records of each rank (and of the node's own lines) that pass the
    filters, oldest first, sent in batches.

    The log is read backwards and only as far as needed: it stops once every rank known
    here has ``count`` lines (the node's own lines count as a rank unless ranks are given).
    The answer's offset is where a follow goes on from.
    """
    run = RunDir.of(request.job)
    keep = logfile.record_filter(request.ranks, request.stderr_only)
    known = set(run.read_ranks())
    expected: set[int | None] = set(known & set(request.ranks)) if request.ranks else {*known, None}
    try:
        with open(run.log_path, "rb") as log:
            end = logfile.end_of_complete_records(log)
            kept = logfile.last_records(log, end, request.count, keep, expected)
    except FileNotFoundError:
        return LogEnd(offset=0)
    chosen = sorted((item for group in kept.values() for item in group), key=lambda item: item[0])
    batch: list[LogRecord] = []
    size = 0
    for _, record in chosen:
        batch.append(record)
        size += len(record.text) + 32
        if size >= logfile.MAX_BATCH_BYTES:
            emit(LogBatch(records=batch))
            batch, size = [], 0
    if batch:
        emit(LogBatch(records=batch))
    return LogEnd(offset=end)


def follow_logs(request: Follow, emit: Emit, idle: Idle = sleep_or_wake) -> LogEnd:
    """Send batches of new records that pass the filters until the job has ended here;
    each batch carries the offset to resume from. Woken by the supervisor's writes
    (``changes.py``), and then at most every ``FOLLOW_POLL_S``: a job that prints a line
    at a time is sent in batches, not a line per wake."""
    run = RunDir.of(request.job)
    keep = logfile.record_filter(request.ranks, request.stderr_only)
    offset = request.offset
    with DirectoryWatch(run.path) as changes:
        while True:
            looked = time.monotonic()
            ended = status.node_state(run) != "running"
            records, new_offset = logfile.read_forward(run.log_path, offset)
            if new_offset != offset:
                offset = new_offset
                kept = [r for r in records if keep(r)]
                if kept:
                    emit(LogBatch(records=kept, offset=offset))
                continue
            if ended:
                record = run.read_exit()
                return LogEnd(offset=offset, ended=True, lost_node=record.lost_node if record else None)
            _until_changed(changes, idle, FOLLOW_POLL_S, looked)


def wait_ended(request: Wait, idle: Idle = sleep_or_wake) -> Ended:
    """Answer once the job no longer runs here (for ``launch --wait``: one quiet
    connection per host instead of a new login every poll), woken by the supervisor's
    ``exit.json`` (``changes.py``)."""
    run = RunDir.of(request.job)
    with DirectoryWatch(run.path) as changes:
        while (state := status.node_state(run)) == "running":
            _until_changed(changes, idle, WAIT_POLL_S, time.monotonic())
    ended = run.read_exit()
    return Ended(state=state, lost_node=ended.lost_node if ended else None)


def _until_changed(changes: DirectoryWatch, idle: Idle, poll: float, looked: float) -> None:
    """Until the run directory changes (at most ``SAFETY_POLL_S``), and ``poll`` seconds after
    the last look (``looked``, monotonic) at the soonest: a job that prints all the time wakes
    the wait at most once per ``poll``, as polling did. Without inotify: ``poll``."""
    wake = changes.fileno()
    if wake is not None:
        idle(SAFETY_POLL_S, wake)
        changes.drain()
    idle(max(poll - (time.monotonic() - looked), 0.0))
