"""``launch --hang-timeout``: the supervisors notice a job that fell silent, take its stacks
and stop it (or keep it, ``--on-hang keep``).

Who decides: node 0. Every supervisor knows when its own ranks last printed a line (or
touched their heartbeat file, ``launcher.context().heartbeat()``); the other nodes send that
time with each teardown beat (``beat <t>``). When no rank of the whole job has been heard
from for the timeout, node 0 tells every node ``hang``; each takes its ranks' stacks
(``node/stack.py``), writes ``hung.json`` and answers ``stacked``. Node 0 then stops the job
as a failure: the teardown stops every node. Nothing is needed from the launching machine.
A job without the teardown channel (one node) is watched by its one supervisor alone.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from launcher.node import nccl_dump
from launcher.node.rundir import RunDir
from launcher.protocol import private
from launcher.protocol.codec import ProtocolError, decode, to_wire
from launcher.protocol.stack import (
    HANG_TIMEOUT_VARIABLE,
    HEARTBEAT_DIR,
    ON_HANG_VARIABLE,
    HangRecord,
    RankStack,
    StackReport,
    TakeStacks,
)

STACK_TIMEOUT_S = 15.0
"""Each rank's stack, when the supervisors take them: node 0 waits this long (and a little
more) for the other nodes' ``stacked`` before it stops the job."""
HANG_FILE = "hung.json"


def hang_settings(env: dict[str, str]) -> tuple[float | None, bool]:
    """``(timeout in seconds or None, keep)`` from the job's environment."""
    try:
        timeout = float(env.get(HANG_TIMEOUT_VARIABLE, "") or "nan")
    except ValueError:
        return None, False
    return (timeout if timeout > 0 else None), env.get(ON_HANG_VARIABLE) == "keep"


class Activity:
    """When a rank of this node was last heard from: its last line, or its last heartbeat."""

    def __init__(self, run: RunDir) -> None:
        self._run = run
        self._last_line = time.time()  # the job's start counts as a sign of life

    def line(self) -> None:
        self._last_line = time.time()

    def last(self) -> float:
        latest = self._last_line
        try:
            entries = list(os.scandir(self._run.path / HEARTBEAT_DIR))
        except OSError:
            return latest  # no heartbeat yet
        for entry in entries:
            try:
                latest = max(latest, entry.stat().st_mtime)
            except OSError:
                continue
        return latest


def record_hang(run: RunDir, report: StackReport, last_output: float, timeout: float, kept: bool) -> HangRecord:
    """Write ``hung.json``: this node's stacks (``report``), without their full text."""
    light = StackReport(
        hostname=report.hostname,
        ranks=[RankStack(r.rank, r.pid, r.method, r.user, r.library, r.path, "", r.error) for r in report.ranks],
        directory=report.directory,
        error=report.error,
    )
    record = HangRecord(last_output=last_output, timeout=timeout, stacks=light, kept=kept)
    private.write_file(run.path / HANG_FILE, json.dumps(to_wire(record)).encode("utf-8"))
    return record


def read_hang(run: RunDir) -> HangRecord | None:
    try:
        with open(run.path / HANG_FILE, encoding="utf-8") as fh:
            return decode(HangRecord, json.load(fh))
    except (FileNotFoundError, NotADirectoryError, ValueError, ProtocolError):
        return None


class HangWatch:
    """Node 0's watch (``peers``: the teardown server, or None alone); other nodes only
    answer ``hang`` (``on_hang``)."""

    def __init__(
        self,
        run: RunDir,
        job: str,
        timeout: float,
        keep: bool,
        activity: Activity,
        note: Callable[[str], None],
        stop: Callable[[], None],
        take: Callable[[TakeStacks], StackReport],
    ) -> None:
        self._run, self._job, self._timeout, self._keep = run, job, timeout, keep
        self._activity, self._note, self._stop, self._take = activity, note, stop, take
        self._done = threading.Event()
        self.hung = False

    def watch(self, peers: Any) -> None:
        """Node 0: start the thread that decides."""
        threading.Thread(target=self._watch, args=(peers,), daemon=True).start()

    def on_hang(self, last_output: float) -> None:
        """Another node: node 0 called the job hung. Take the stacks here (the teardown
        client then answers ``stacked``); node 0 stops the job."""
        self._note("node 0 found the job hung: taking the stacks here")
        self._record(last_output)

    def finish(self) -> None:
        self._done.set()

    def _watch(self, peers: Any) -> None:
        every = min(5.0, max(self._timeout / 10, 0.5))
        while not self._done.wait(every):
            heard = [self._activity.last(), *(peers.peers_output() if peers is not None else [])]
            last = max(heard)
            if time.time() - last < self._timeout:
                continue
            silent = time.time() - last
            self._note(f"no rank printed for {silent:.0f} s (--hang-timeout {self._timeout:g}): the job is hung")
            if peers is not None:
                peers.announce_hang(last)
            self._record(last)
            if peers is not None:
                peers.wait_stacked(STACK_TIMEOUT_S + 5)
            if self._keep:
                self._note("--on-hang keep: the job is left running")
            else:
                self._note("stopping the hung job")
                self._stop()
            return

    def _record(self, last_output: float) -> None:
        self.hung = True
        # Named after the time node 0 sent: the same directory on every node.
        report = self._take(TakeStacks(job=self._job, timeout=STACK_TIMEOUT_S, label=f"hung-{last_output:.0f}"))
        record = record_hang(self._run, report, last_output, self._timeout, self._keep)
        if record.stacks.directory:
            self._note(f"stacks of the hung ranks: {record.stacks.directory}")
        # NCCL's flight recorders too, as ``stack --nccl`` asks them: the dumps stay here.
        ranks = [r.rank for r in report.ranks if r.pid is not None]
        dumped, _ = nccl_dump.dump_flight_recorders(self._run, ranks, STACK_TIMEOUT_S)
        if dumped:
            self._note(f"NCCL flight-recorder dumps of ranks {', '.join(sorted(dumped, key=int))}: {self._run.path}")
