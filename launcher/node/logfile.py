"""``output.log``: one record per line, written by the supervisor, read by the agent.

    <time> <global rank or -> <o|e> <text>\\n

Only newlines end a record: a carriage return (a progress bar) stays inside its record.
Lines longer than ``MAX_LINE_BYTES`` are stored as several records, so that no record
exceeds a reader's batch. Readers go forwards from a byte offset (``logs``, ``follow``) or
backwards from the end (``--tail``, status), and never take a record still being written.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from launcher.protocol import private
from launcher.protocol.logs import LogRecord

RANK_PREFIX = re.compile(rb"\x1e(\d+)\x1f")
"""What torchrun puts before each worker line (``protocol.RANK_PREFIX_TEMPLATE``)."""
MAX_LINE_BYTES = 64 * 1024
MAX_BATCH_BYTES = 256 * 1024
"""The most one forward read takes at once (and so one message to the launcher)."""

RecordFilter = Callable[[LogRecord], bool]


class OutputLog:
    """The writer: ``output.log`` plus the tmux pane, each line once in each, whole, in order."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._lock = threading.Lock()
        self.ranks_written: set[int] = set()
        """The ranks of the lines written so far (a rank that ends before anyone polls its
        environment is still known by its output)."""

    @classmethod
    def open(cls, path: Path) -> OutputLog:
        """Appending to ``path``, 0600: a job's output may print its secrets."""
        return cls(open(private.open_append(path), "ab", buffering=0))

    def write(self, rank: int | None, stream: str, text: bytes) -> None:
        if not text.endswith(b"\n"):
            text += b"\n"
        pieces = [text[i : i + MAX_LINE_BYTES] for i in range(0, len(text), MAX_LINE_BYTES)]
        rank_field = b"-" if rank is None else str(rank).encode()
        label = b"" if rank is None else b"[rank %d] " % rank
        with self._lock:  # stamped under the lock: the file's order is the times' (read merges by time)
            header = b"%.3f %s %s " % (time.time(), rank_field, stream.encode())
            self._file.write(b"".join(header + piece + (b"" if piece.endswith(b"\n") else b"\n") for piece in pieces))
            if rank is not None:
                self.ranks_written.add(rank)
            try:
                sys.stdout.buffer.write(label + text)
                sys.stdout.buffer.flush()
            except OSError:
                pass  # the tmux pane is gone (session killed); the log file is what counts

    def note(self, message: str) -> None:
        """A line of the launcher's own, on stderr, with no rank."""
        self.write(None, "e", f"launcher: {message}\n".encode())


def parse_record(line: bytes) -> LogRecord:
    """One stored line (without or with its newline) -> its record."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 4 or parts[2] not in (b"o", b"e"):
        return LogRecord(0.0, None, "o", line.decode("utf-8", "replace"))
    stamp, rank, stream, text = parts
    return LogRecord(
        float(stamp),
        None if rank == b"-" else int(rank),
        "e" if stream == b"e" else "o",
        text.decode("utf-8", "replace"),
    )


def record_filter(ranks: list[int] | None, stderr_only: bool) -> RecordFilter:
    """Whether a record passes ``logs --rank/--stderr``."""
    wanted = set(ranks or ())
    return lambda record: (not wanted or record.rank in wanted) and (not stderr_only or record.stream == "e")


def read_forward(path: Path, offset: int) -> tuple[list[LogRecord], int]:
    """Whole records from ``offset`` on, at most a batch's worth, and the offset after them."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(MAX_BATCH_BYTES)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return [parse_record(line) for line in data[:end].split(b"\n")[:-1]], offset + end


def read_last_bytes(path: Path, max_bytes: int = 4 << 20) -> list[LogRecord]:
    """The records of the last ``max_bytes``: a failure summary and a traceback fit easily."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except FileNotFoundError:
        return []
    if size > max_bytes:
        data = data[data.find(b"\n") + 1 :]  # drop the partial first record
    return [parse_record(line) for line in data.split(b"\n")[:-1]]


def last_records(
    log: IO[bytes], end: int, count: int, keep: RecordFilter, expected: set[int | None]
) -> dict[int | None, list[tuple[int, LogRecord]]]:
    """``(offset, record)`` of the last ``count`` kept records of each rank before ``end``.

    Reads backwards, and stops once every rank in ``expected`` (it grows with the ranks
    met) has ``count`` records.
    """
    kept: dict[int | None, list[tuple[int, LogRecord]]] = {}
    for offset, line in records_backwards(log, end) if count else ():
        record = parse_record(line)
        if not keep(record):
            continue
        group = kept.setdefault(record.rank, [])
        if len(group) < count:
            group.append((offset, record))
            expected.add(record.rank)
        if all(len(kept.get(g, ())) >= count for g in expected):
            break
    return kept


def records_backwards(log: IO[bytes], end: int, block: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """``(offset, record)`` for each record of a log that ends by ``end``, the last one first
    (``end`` is just after a newline)."""
    position = end
    pending = b""  # the start of the newest record not yet given, with its newline
    while position > 0:
        start = max(position - block, 0)
        log.seek(start)
        pieces = (log.read(position - start) + pending).split(b"\n")
        pieces.pop()  # the text ends with a newline: nothing after it
        pending = pieces.pop(0) + b"\n" if start > 0 else b""  # it may begin before `start`
        offset = start + len(pending)
        offsets = []
        for piece in pieces:
            offsets.append(offset)
            offset += len(piece) + 1
        yield from zip(reversed(offsets), reversed(pieces))
        position = start


def end_of_complete_records(fh: IO[bytes], block: int = 1 << 20) -> int:
    """The offset after the log's last newline: a record after it is still being written."""
    position = fh.seek(0, os.SEEK_END)
    while position > 0:
        start = max(position - block, 0)
        fh.seek(start)
        newline = fh.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0
