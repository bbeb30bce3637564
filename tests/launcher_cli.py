"""Driving the launcher CLI against the test cluster, for the end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, TestHost

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "scripts"


def run_cli(cluster: Cluster, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=REPO,
        env=cluster.env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    result = run_cli(cluster, "status", "--json", name)
    assert result.stdout, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def wait_until_ended(cluster: Cluster, name: str, timeout: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        status = status_of(cluster, name)
        return None if any(h["state"] == "running" for h in status["hosts"]) else status

    result: dict[str, Any] = wait_for(f"{name} to end", ended, timeout)
    return result


def leftovers(host: TestHost, patterns: tuple[str, ...]) -> list[tuple[int, str]]:
    """Processes on ``host`` whose command line has one of ``patterns``.

    The tmux server is shared by every job's session (its command line is that of the
    first ``new-session``), so it never counts.
    """
    return [
        (pid, cmd)
        for pid, cmd in host.processes()
        if any(p in cmd for p in patterns) and not cmd.split(" ", 1)[0].endswith("tmux")
    ]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def kill_jobs_left_running(cluster: Cluster) -> Iterator[None]:
    """Every job a test launched is killed afterwards, pass or fail.

    (After a failed rank, torch elastic keeps the other nodes in its exit barrier for
    minutes; a test must not leave them to the next one.)
    """
    records = cluster.launcher_state_dir / "launcher" / "jobs"
    before = set(records.glob("*.json"))
    yield
    for record in set(records.glob("*.json")) - before:
        run_cli(cluster, "kill", "--grace", "0", record.stem)
