"""The pure parts of lost hosts and held starts: which host reads ``lost`` and why, a
vanished supervisor, the progress note naming the slowest hosts, a held supervisor that
ends by itself. No SSH, no root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.cli.render import waiting_note
from launcher.job.status import HostStatus, _mark_lost, overall_state
from launcher.launching.spec import make_spec
from launcher.node.rundir import ExitRecord, JobSpec, RunDir, SupervisorStarted
from launcher.node.status import node_state

CUT_AT = 1_700_000_000.0


def hosts(*states: str) -> tuple[HostStatus, ...]:
    return tuple(HostStatus(f"h{i}", state) for i, state in enumerate(states))  # type: ignore[arg-type]


def test_the_host_most_others_name_is_the_lost_one() -> None:
    """h2 cut off: h0 (node 0) and h1 (told by node 0) name h2; h2 itself names node 0."""
    marked, causes = _mark_lost(hosts("failed", "failed", "failed"), [(2, CUT_AT), (2, CUT_AT), (0, CUT_AT + 1)])

    assert [h.state for h in marked] == ["failed", "failed", "lost"]
    assert marked[2].last_heard == CUT_AT
    assert marked[2].error is not None and marked[2].error.startswith("lost: no heartbeat since ")
    (cause,) = causes
    assert cause.lost and cause.host == "h2" and cause.time == CUT_AT
    assert cause.exception == f"h2 lost: no heartbeat since {time.strftime('%H:%M:%S', time.localtime(CUT_AT))}"


def test_an_unreachable_host_named_lost_reads_lost() -> None:
    marked, _ = _mark_lost(hosts("failed", "unreachable"), [(1, CUT_AT)])
    assert [h.state for h in marked] == ["failed", "lost"]


def test_a_host_that_still_runs_is_not_marked_lost() -> None:
    marked, causes = _mark_lost(hosts("failed", "running"), [(1, CUT_AT)])
    assert [h.state for h in marked] == ["failed", "running"] and causes == []


def test_a_vanished_supervisor_is_a_lost_root_cause_without_heartbeats() -> None:
    marked, causes = _mark_lost((HostStatus("h0", "lost", started_at=CUT_AT),), [])
    assert marked[0].state == "lost"
    assert [c.exception for c in causes] == [
        "h0 lost: its supervisor vanished without a word (the host rebooted, or it was SIGKILLed)"
    ]


@pytest.mark.parametrize(
    ("states", "job"),
    [
        (["running", "lost"], "failed"),
        (["unreachable", "unreachable"], "unknown"),
        (["running", "unreachable"], "running"),
        (["killed", "lost"], "killed"),
    ],
)
def test_the_jobs_state(states: list[str], job: str) -> None:
    assert overall_state(states) == job


def test_a_supervisor_gone_without_exit_json_reads_lost(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.reset()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run.write_started(SupervisorStarted(pid=gone.pid, create_time=1.0, child=gone.pid, time=CUT_AT))
    assert node_state(run) == "lost"
    run.write_exit(ExitRecord(exit_code=143, time=CUT_AT, stopped_by=2, lost_node=2, last_heard=CUT_AT))
    assert node_state(run) == "failed"


@pytest.mark.parametrize(
    ("pending", "total", "note"),
    [
        ([], 64, ""),
        (["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"], 16, ""),  # most are still to come
        (["h7"], 64, "waiting for h7"),
        (["h7", "h9", "h12", "h40", "h41"], 64, "waiting for h7, h9, h12 (+2)"),
        (["h0", "h1"], 2, "waiting for h0, h1"),
    ],
)
def test_the_progress_names_the_slowest_hosts(pending: list[str], total: int, note: str) -> None:
    assert waiting_note(pending, total) == note


@pytest.mark.parametrize("seconds", [0.1, 0, -1, 1e6])
def test_a_heartbeat_timeout_out_of_range_is_one_line(seconds: float) -> None:
    from launcher.errors import UsageError

    with pytest.raises(UsageError, match=re.escape("--heartbeat-timeout must be from 0.5 to 86400 seconds")):
        make_spec("train.py", hosts="localhost", heartbeat_timeout=seconds)


def held_supervisor(tmp_path: Path, hold: float, agent_pid: int, agent_create_time: float) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.reset()
    run.write_spec(
        JobSpec(
            job="held",
            argv=[sys.executable, "-c", "print('ran')"],
            env=dict(os.environ),
            cwd=str(tmp_path),
            hold=hold,
            agent_pid=agent_pid,
            agent_create_time=agent_create_time,
        )
    )
    return run


def supervise(run: RunDir) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.node.supervisor", str(run.path)], capture_output=True, text=True, timeout=30
    )


def test_a_held_supervisor_whose_agent_is_gone_ends_at_once(tmp_path: Path) -> None:
    import psutil

    agent = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(agent.pid).create_time()
    agent.wait()
    run = held_supervisor(tmp_path, hold=60, agent_pid=agent.pid, agent_create_time=create_time)

    began = time.monotonic()
    assert supervise(run).returncode == 1
    assert time.monotonic() - began < 10
    ended = run.read_exit()
    assert ended is not None and ended.error is not None
    assert ended.error.startswith("launch abandoned: the launcher went away")
    assert not run.has_started() and "ran" not in run.log_path.read_text()


def test_a_held_supervisor_without_a_commit_ends_at_its_deadline(tmp_path: Path) -> None:
    import psutil

    me = psutil.Process()
    run = held_supervisor(tmp_path, hold=1.0, agent_pid=me.pid, agent_create_time=me.create_time())

    assert supervise(run).returncode == 1
    ended = run.read_exit()
    assert ended is not None and ended.error == "launch abandoned: no commit from the launcher within 1 s"
    assert not run.has_started()


def test_a_committed_supervisor_runs_its_command(tmp_path: Path) -> None:
    import psutil

    me = psutil.Process()
    run = held_supervisor(tmp_path, hold=30.0, agent_pid=me.pid, agent_create_time=me.create_time())
    run.mark_committed()

    assert supervise(run).returncode == 0
    ended = run.read_exit()
    assert ended is not None and ended.exit_code == 0 and run.has_started()
