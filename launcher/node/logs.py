"""The log requests: read a batch, the last N lines of each rank, follow, wait for the end.

Filters (``--rank``, ``--stderr``) apply here, so only the lines shown cross the network.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from launcher.node import logfile, status
from launcher.node.errors import Idle
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


def follow_logs(request: Follow, emit: Emit, idle: Idle = time.sleep) -> LogEnd:
    """Send batches of new records that pass the filters until the job has ended here;
    each batch carries the offset to resume from."""
    run = RunDir.of(request.job)
    keep = logfile.record_filter(request.ranks, request.stderr_only)
    offset = request.offset
    while True:
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
        idle(FOLLOW_POLL_S)


def wait_ended(request: Wait, idle: Idle = time.sleep) -> Ended:
    """Answer once the job no longer runs here (for ``launch --wait``: one quiet
    connection per host instead of a new login every poll)."""
    run = RunDir.of(request.job)
    while (state := status.node_state(run)) == "running":
        idle(WAIT_POLL_S)
    ended = run.read_exit()
    return Ended(state=state, lost_node=ended.lost_node if ended else None)
