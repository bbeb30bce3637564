"""``launch --restarts`` on the middle layer: the real CLI, watcher, agent and supervisors on
localhost, with a private state directory and tmux server (``local_node.py``). No root, no SSH.

The jobs are ``--runner exec`` shell commands that read ``LAUNCHER_ATTEMPT``; the cluster's
tests (``test_recovery_e2e.py``) cover lost hosts, spares and a training script that resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from local_node import LocalNode

import launcher
from launcher.job.records import load_record
from launcher.job.watcher import stop_watcher

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/tmux"), reason="needs tmux")

TIMEOUT_S = 60


@pytest.fixture
def here(node: LocalNode, tmp_path: Path) -> Iterator[LocalNode]:
    """The node, its environment in this process (records are read here), and every watcher
    a test started stopped afterwards (by the pid its record names)."""
    with node.environment():
        try:
            yield node
        finally:
            for path in (node.state_dir / "launcher" / "jobs").glob("*.json"):
                stop_watcher(load_record(path.stem), grace=5)


def cli(node: LocalNode, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        env={**os.environ, **node.env()},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def launch(node: LocalNode, name: str, command: str, *options: str) -> subprocess.CompletedProcess[str]:
    node.jobs.add(name)
    return cli(
        node, "launch", "--hosts", "localhost", "--name", name, "--runner", "exec", *options, "--", "sh", "-c", command
    )


def recovery(node: LocalNode, name: str) -> dict[str, object]:
    status = json.loads(cli(node, "status", "--json", name).stdout)
    assert status["recovery"] is not None, status
    return status["recovery"]  # type: ignore[no-any-return]


def test_a_failed_attempt_is_launched_again_and_the_next_one_succeeds(here: LocalNode) -> None:
    script = (
        'echo "attempt $LAUNCHER_ATTEMPT"; [ "$LAUNCHER_ATTEMPT" -ge 2 ] || { echo "OSError: flaky disk" >&2; exit 3; }'
    )
    launched = launch(here, "again", script, "--restarts", "2", "--follow")

    assert launched.returncode == 0, launched.stdout + launched.stderr
    out = launched.stdout
    assert "recovery    up to 2 restart(s); watcher pid" in out
    assert "--- attempt 1 of 3 on localhost ---" in out and "[a1 localhost] attempt 1" in out
    assert "--- attempt 2 of 3 on localhost ---" in out and "[a2 localhost] attempt 2" in out
    assert "[a3" not in out
    seen = recovery(here, "again")
    assert seen["attempt"] == 2 and seen["watched"] is False
    assert seen["doing"] == "ended: succeeded at attempt 2"
    attempts = seen["attempts"]
    assert isinstance(attempts, list) and [a["state"] for a in attempts] == ["failed", "succeeded"]
    assert attempts[0]["cause"] == "localhost: OSError: flaky disk (the same hosts again, once)"
    listed = json.loads(cli(here, "list", "--json").stdout)["jobs"]
    assert [j["name"] for j in listed] == ["again"]  # one job, not one per attempt
    job = launcher.Job.get("again")
    assert [(a.number, a.hosts, a.state) for a in job.attempts] == [
        (1, ("localhost",), "failed"),
        (2, ("localhost",), "succeeded"),
    ]
    assert job.wait().state == "succeeded"


def test_an_ordinary_exception_twice_fails_the_job_without_spending_the_restarts(here: LocalNode) -> None:
    launched = launch(here, "bug", 'echo "ValueError: bad config" >&2; exit 1', "--restarts", "5", "--wait")

    assert launched.returncode == 1, launched.stdout + launched.stderr
    seen = recovery(here, "bug")
    assert seen["attempt"] == 2
    assert seen["doing"] == "gave up: the code failed 2 times, not a host: localhost: ValueError: bad config"
    text = cli(here, "status", "bug").stdout
    assert "Recovery: attempt 2 of 6; gave up: the code failed 2 times" in text, text


def test_a_host_blamed_with_no_spare_and_no_room_fails_the_job_naming_it(here: LocalNode) -> None:
    launched = launch(here, "segv", "kill -SEGV $$", "--restarts", "2", "--wait")

    assert launched.returncode == 1, launched.stdout + launched.stderr
    seen = recovery(here, "segv")
    assert seen["attempt"] == 1
    assert seen["doing"] == (
        "gave up: 0 host(s) left, --nnodes needs 1 (left out: localhost: localhost: killed by SIGSEGV)"
    )
    assert str(seen["left_out"]["localhost"]).startswith("localhost: killed by SIGSEGV (left out at ")  # type: ignore[index]

    assert load_record("segv").left_out["localhost"]["until"] > time.time()
    wrong = cli(here, "readmit", "segv", "h9")
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1] == "Error: h9: not left out of segv (left out: localhost)"
    readmitted = cli(here, "readmit", "segv", "localhost")
    assert readmitted.returncode == 0, readmitted.stderr
    assert load_record("segv").left_out["localhost"]["until"] == 0.0  # the next restart may take it


def test_kill_stops_the_watcher_and_the_attempt_and_leaves_nothing(here: LocalNode) -> None:
    script = '[ "$LAUNCHER_ATTEMPT" -ge 2 ] || exit 4; echo running; exec sleep 300'
    launched = launch(here, "stopme", script, "--restarts", "3")
    assert launched.returncode == 0, launched.stderr
    here.wait_for("attempt 2 to run", lambda: load_record("stopme").attempt == 2 and here.job_processes("stopme"))
    watcher = psutil.Process(load_record("stopme").watcher["pid"])  # type: ignore[index]

    killed = cli(here, "kill", "stopme")

    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert not watcher.is_running() or watcher.status() == psutil.STATUS_ZOMBIE
    assert here.job_processes("stopme") == []
    assert load_record("stopme").recovery == "stopped: the job was killed"
    assert recovery(here, "stopme")["watched"] is False


def test_status_says_when_recovery_is_no_longer_watched(here: LocalNode) -> None:
    launched = launch(here, "orphan", "exec sleep 300", "--restarts", "1")
    assert launched.returncode == 0, launched.stderr
    watcher = psutil.Process(load_record("orphan").watcher["pid"])  # type: ignore[index]
    watcher.kill()  # this machine lost it (a reboot): the attempt runs on
    watcher.wait(10)

    text = cli(here, "status", "orphan")

    assert "orphan: running" in text.stdout, text.stdout
    assert "Recovery: attempt 1 of 2; no longer watched" in text.stdout, text.stdout
    assert here.job_processes("orphan")
    assert cli(here, "kill", "orphan").returncode == 0
