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

Records are ``[time, rank or None, stream, text]`` as ``node.parse_record`` gives them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

_ENTRY = re.compile(r"^\[\d+\]:$")
_FIELD = re.compile(r"^\s+(\w+)\s*:\s?(.*)$")
_RANK = re.compile(r"^(\d+) \(local_rank: (\d+)\)")
_EXITCODE = re.compile(r"^(-?\d+)")
_SIGNAL = re.compile(r"\((SIG[A-Z0-9]+)\)")
_NOTICED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")
_MAX_TRACEBACK_LINES = 60
_TORCH_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ")
"""Once a process group exists, torch's excepthook prefixes each traceback line with it."""


def rank_failures(records: Sequence[Sequence[Any]]) -> tuple[dict[int, dict[str, Any]], int | None]:
    """Every failed rank in torchrun's last summary, and which of them is the root cause."""
    lines = [r[3] for r in records if r[1] is None and r[2] == "e"]
    failures: dict[int, dict[str, Any]] = {}
    root: int | None = None
    section = ""
    entry: dict[str, Any] | None = None
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
                failure = _failure_from_entry(entry)
                if failure is not None:
                    failures[failure["rank"]] = failure
                    if section == "root":
                        root = failure["rank"]
                entry = None
    return failures, root


def _failure_from_entry(entry: dict[str, str]) -> dict[str, Any] | None:
    rank = _RANK.match(entry.get("rank", ""))
    code = _EXITCODE.match(entry.get("exitcode", ""))
    if not rank or not code:
        return None
    exit_code = int(code.group(1))
    signal = _SIGNAL.search(entry.get("exitcode", ""))
    return {
        "rank": int(rank.group(1)),
        "local_rank": int(rank.group(2)),
        "exit_code": exit_code,
        "signal": signal.group(1) if signal else (f"signal {-exit_code}" if exit_code < 0 else None),
        "error_file": entry.get("error_file") if entry.get("error_file") not in (None, "<N/A>") else None,
    }


def root_cause(records: Sequence[Sequence[Any]], exit_code: int | None) -> dict[str, Any] | None:
    """The first failure on this node, with the traceback that explains it; None if none."""
    failures, root = rank_failures(records)
    if root is not None:
        failure = dict(failures[root])
        failure["time"] = _noticed_at(records, failure["local_rank"])
        failure["traceback"] = _error_file_traceback(failure["error_file"]) or _printed_traceback(records, root)
    elif exit_code not in (None, 0):
        # No torchrun summary: another runner, or torchrun itself failed (bad arguments,
        # rendezvous timeout). What it printed last on stderr explains it.
        failure = {"rank": None, "local_rank": None, "exit_code": exit_code, "signal": None, "error_file": None}
        failure["time"] = _last_time(records)
        failure["traceback"] = _printed_traceback(records, None)
    else:
        return None
    failure["exception"] = _exception_line(failure["traceback"], failure["signal"])
    return failure


def _noticed_at(records: Sequence[Sequence[Any]], local_rank: int) -> float | None:
    """When torchrun last noticed the rank's end (its ``failed (exitcode: ...)`` line)."""
    for stamp, rank, stream, text in reversed(records):  # the last attempt's, after restarts
        match = _NOTICED.search(text) if rank is None and stream == "e" else None
        if match and int(match.group(2)) == local_rank:
            return float(stamp)
    return _last_time(records)


def _last_time(records: Sequence[Sequence[Any]]) -> float | None:
    return float(records[-1][0]) if records else None


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


def _printed_traceback(records: Sequence[Sequence[Any]], rank: int | None) -> list[str]:
    """The last ``Traceback (most recent call last):`` block the rank printed on stderr."""
    lines = [_TORCH_RANK_PREFIX.sub("", r[3]) for r in records if r[1] == rank and r[2] == "e"]
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
