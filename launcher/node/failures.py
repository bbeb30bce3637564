"""Why a node failed: which rank failed first, how, and its traceback (runs on the node).

torchrun ends a failed run with a summary on stderr (``ChildFailedError``) that lists
every failed rank and names the root cause, the first observed failure::

    Root Cause (first observed failure):
    [0]:
      time      : 2026-11-21_09:31:53
      host      : node2
      rank      : 2 (local_rank: 2)
      exitcode  : -9 (pid: 24111)  (SIGKILL)
      error_file: <N/A>
      traceback : Signal 9 (SIGKILL) received by PID 24111

The traceback comes from the rank's ``error.json`` when the script uses torch elastic's
``@record``, and otherwise from the last Python traceback the rank printed on stderr
(the supervisor keeps every line with its global rank).

Records are ``protocol.LogRecord``s, as ``logfile.parse_record`` gives them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

from launcher.protocol.logs import LogRecord
from launcher.protocol.messages import RankFailure

_ENTRY = re.compile(r"^\[\d+\]:$")
_FIELD = re.compile(r"^\s+(\w+)\s*:\s?(.*)$")
_RANK = re.compile(r"^(\d+) \(local_rank: (\d+)\)")
_EXITCODE = re.compile(r"^(-?\d+)")
_SIGNAL = re.compile(r"\((SIG[A-Z0-9]+)\)")
_NOTICED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")
_MAX_TRACEBACK_LINES = 60
_TORCH_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ")
"""Once a process group exists, torch's excepthook prefixes each traceback line with it."""


@dataclasses.dataclass(frozen=True)
class _SummaryEntry:
    """One failed rank as torchrun's summary lists it."""

    rank: int
    local_rank: int
    exit_code: int
    signal: str | None
    error_file: str | None


def rank_failures(records: Sequence[LogRecord]) -> tuple[dict[int, RankFailure], int | None]:
    """Every failed rank in torchrun's last summary, and which of them is the root cause."""
    entries, root = _summary_entries(records)
    return {rank: _as_failure(entry, records) for rank, entry in entries.items()}, root


def _summary_entries(records: Sequence[LogRecord]) -> tuple[dict[int, _SummaryEntry], int | None]:
    lines = [r.text for r in records if r.rank is None and r.stream == "e"]
    failures: dict[int, _SummaryEntry] = {}
    root: int | None = None
    section = ""
    entry: dict[str, str] | None = None
    for line in lines:
        if "ChildFailedError" in line:
            failures, root, section, entry = {}, None, "", None  # a later attempt's summary wins
        elif line.startswith("Failures:"):
            section = "failures"
        elif line.startswith("Root Cause"):
            section = "root"
        elif _ENTRY.match(line.strip()) and section:
            entry = {}
        elif entry is not None and (field := _FIELD.match(line)):
            entry[field.group(1)] = field.group(2).strip()
            if field.group(1) == "traceback":  # the last field of an entry
                failure = _entry_from_fields(entry)
                if failure is not None:
                    failures[failure.rank] = failure
                    if section == "root":
                        root = failure.rank
                entry = None
    return failures, root


def _entry_from_fields(entry: dict[str, str]) -> _SummaryEntry | None:
    rank = _RANK.match(entry.get("rank", ""))
    code = _EXITCODE.match(entry.get("exitcode", ""))
    if not rank or not code:
        return None
    exit_code = int(code.group(1))
    signal = _SIGNAL.search(entry.get("exitcode", ""))
    error_file = entry.get("error_file")
    return _SummaryEntry(
        rank=int(rank.group(1)),
        local_rank=int(rank.group(2)),
        exit_code=exit_code,
        signal=signal.group(1) if signal else (f"signal {-exit_code}" if exit_code < 0 else None),
        error_file=error_file if error_file not in (None, "<N/A>") else None,
    )


def _as_failure(entry: _SummaryEntry, records: Sequence[LogRecord], with_traceback: bool = False) -> RankFailure:
    """The failure of one rank; with its traceback and time only for the root cause (costly)."""
    traceback: list[str] = []
    if with_traceback:
        traceback = _error_file_traceback(entry.error_file) or _printed_traceback(records, entry.rank)
    return RankFailure(
        rank=entry.rank,
        local_rank=entry.local_rank,
        exit_code=entry.exit_code,
        signal=entry.signal,
        exception=_exception_line(traceback, entry.signal) if with_traceback else "",
        traceback=traceback,
        time=_noticed_at(records, entry.local_rank) if with_traceback else None,
        error_file=entry.error_file,
    )


def root_cause(records: Sequence[LogRecord], exit_code: int | None) -> RankFailure | None:
    """The first failure on this node, with the traceback that explains it; None if none."""
    entries, root = _summary_entries(records)
    if root is not None:
        return _as_failure(entries[root], records, with_traceback=True)
    if exit_code in (None, 0):
        return None
    # No torchrun summary: another runner, or torchrun itself failed (bad arguments,
    # rendezvous timeout). What it printed last on stderr explains it.
    traceback = _printed_traceback(records, None)
    return RankFailure(
        rank=None,
        local_rank=None,
        exit_code=exit_code,
        signal=None,
        exception=_exception_line(traceback, None),
        traceback=traceback,
        time=_last_time(records),
    )


def _noticed_at(records: Sequence[LogRecord], local_rank: int) -> float | None:
    """When torchrun last noticed the rank's end (its ``failed (exitcode: ...)`` line)."""
    for record in reversed(records):  # the last attempt's, after restarts
        match = _NOTICED.search(record.text) if record.rank is None and record.stream == "e" else None
        if match and int(match.group(2)) == local_rank:
            return record.time
    return _last_time(records)


def _last_time(records: Sequence[LogRecord]) -> float | None:
    return records[-1].time if records else None


def _error_file_traceback(path: str | None) -> list[str]:
    """The traceback ``@record`` wrote for the rank, if it did."""
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            message = json.load(fh)["message"]
        if isinstance(message, str):
            return message.splitlines()
        callstack = str(message["extraInfo"]["py_callstack"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return callstack.splitlines()[-_MAX_TRACEBACK_LINES:]


def _printed_traceback(records: Sequence[LogRecord], rank: int | None) -> list[str]:
    """The last ``Traceback (most recent call last):`` block the rank printed on stderr."""
    lines = [_TORCH_RANK_PREFIX.sub("", r.text) for r in records if r.rank == rank and r.stream == "e"]
    if rank is None:
        # torchrun's own summary is not the job's traceback.
        cut = next((i for i, line in enumerate(lines) if "ChildFailedError" in line), len(lines))
        lines = lines[:cut]
    start = max(
        (i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")), default=None
    )
    if start is None:
        return lines[-10:]
    # The block ends at the exception line: the first unindented line after the frames.
    # What follows (torch's exit warnings, say) is not part of it.
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()), len(lines) - 1)
    block = lines[start : end + 1]
    if len(block) > _MAX_TRACEBACK_LINES:  # keep the header and the innermost frames
        block = [block[0], "  ...", *block[-(_MAX_TRACEBACK_LINES - 2) :]]
    return block


def _exception_line(traceback: list[str], signal: str | None) -> str:
    if signal is not None:
        hint = " (out of memory? the kernel's OOM killer sends SIGKILL)" if signal == "SIGKILL" else ""
        return f"killed by {signal}{hint}"
    for line in reversed(traceback):
        if line and not line[0].isspace() and not line.startswith("Traceback"):
            return line
    return traceback[-1] if traceback else ""
