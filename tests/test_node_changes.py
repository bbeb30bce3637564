"""Waits woken by the run directory's changes (``node/changes.py``), not by polling it."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil
import pytest

from launcher.node import changes, logs
from launcher.node.changes import DirectoryWatch
from launcher.node.rundir import ExitRecord, RunDir, SupervisorStarted
from launcher.protocol.logs import Follow, LogBatch
from launcher.protocol.messages import Ended, Wait

QUIET_S = 0.2
"""How long to watch for a wake that must not come."""
NEVER_S = 60.0
"""A poll so long that only a wake can end the wait within a test's patience."""


def test_a_change_in_the_directory_wakes_the_watch(tmp_path: Path) -> None:
    (tmp_path / "output.log").write_bytes(b"")
    with DirectoryWatch(tmp_path) as watch:
        assert watch.fileno() is not None  # Linux: inotify
        assert not watch.wait(QUIET_S)
        with open(tmp_path / "output.log", "ab") as log:
            log.write(b"a line\n")
        assert watch.wait(NEVER_S)
        watch.drain()
        assert not watch.wait(QUIET_S)
        (tmp_path / ".exit.tmp").write_text("{}")
        watch.drain()
        (tmp_path / ".exit.tmp").rename(tmp_path / "exit.json")  # how a record is written
        assert watch.wait(NEVER_S)


def started_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunDir:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr(changes, "SAFETY_POLL_S", NEVER_S)
    monkeypatch.setattr(logs, "SAFETY_POLL_S", NEVER_S)
    run = RunDir.of("job")
    run.path.mkdir(parents=True)
    me = psutil.Process()
    run.write_started(SupervisorStarted(pid=me.pid, create_time=me.create_time(), child=me.pid, time=1.0))
    return run


def in_thread(target: object) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(target()), daemon=True)  # type: ignore[operator]
    thread.start()
    return thread, result


def test_wait_is_answered_when_exit_json_appears_not_at_its_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = started_run(tmp_path, monkeypatch)
    thread, result = in_thread(lambda: logs.wait_ended(Wait(job="job")))
    thread.join(QUIET_S)
    assert thread.is_alive()  # the job runs: nothing to answer

    run.write_exit(ExitRecord(exit_code=3, time=2.0))

    thread.join(NEVER_S / 4)
    assert result == [Ended(state="failed")]


def test_follow_sends_a_line_when_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = started_run(tmp_path, monkeypatch)
    run.log_path.write_bytes(b"")
    sent: list[LogBatch] = []
    got_line = threading.Event()

    def emit(batch: LogBatch) -> None:
        sent.append(batch)
        got_line.set()

    looks: list[float] = []
    real_state = logs.status.node_state
    monkeypatch.setattr(logs.status, "node_state", lambda run: looks.append(1) or real_state(run))

    thread, _ = in_thread(lambda: logs.follow_logs(Follow(job="job"), emit))
    assert not got_line.wait(QUIET_S * 5)
    assert len(looks) <= 2, len(looks)  # a quiet job is not looked at every FOLLOW_POLL_S (20 a second)
    with open(run.log_path, "ab") as log:
        log.write(b"1.000 0 o hello\n")
    assert got_line.wait(NEVER_S / 4)
    assert [r.text for batch in sent for r in batch.records] == ["hello"]
    run.write_exit(ExitRecord(exit_code=0, time=2.0))
    thread.join(NEVER_S / 4)
    assert not thread.is_alive()
