"""``launch --restarts`` on the real test cluster: a host crashes mid-job and the job goes on.

Four hosts of their own (h3 the spare), so that crashing one disturbs no other module. Each
test brings what it crashed back up (``Cluster.reboot``), pass or fail. The checkpoints are
in each host's private /tmp: a host that joins (the spare) has none, and the survivors'
copies carry the job on (``examples/train_llm.py``'s per-node checkpoints).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from launcher_cli import REPO, job_name, kill_jobs_left_running, leftovers, run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

LIMIT_S = "3"
"""``--heartbeat-timeout``: a crashed host is lost after 3 s."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(4, tmp_path_factory.mktemp("recovery-cluster"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def crashed(cluster: Cluster) -> Iterator[list[str]]:
    """Hosts a test crashed or cut off come back afterwards."""
    names: list[str] = []
    yield names
    for host in cluster.hosts:
        host.unblock_all()
        if host.name in names and not host.is_up():
            cluster.reboot(host)


def record(cluster: Cluster, name: str) -> dict[str, object]:
    path = Path(cluster.launcher_state_dir) / "launcher" / "jobs" / f"{name}.json"
    data: dict[str, object] = json.loads(path.read_text())
    return data


def launch(cluster: Cluster, name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "launcher", "launch", "--name", name, "--heartbeat-timeout", LIMIT_S, *args],
        cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def sleep_on_h0_h1_then_crash_h1(cluster: Cluster, crashed: list[str], name: str, seconds: int, *options: str) -> None:
    """Launch ``sleep SECONDS`` on h0 and h1 with ``options``; once it runs on h1, crash h1."""
    launched = run_cli(
        cluster, "launch", "--name", name, "--heartbeat-timeout", LIMIT_S, "--hosts", "h0,h1", *options,
        "--runner", "exec", "sleep", str(seconds),
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    h1 = cluster.hosts[1]
    wait_for("the job on h1", lambda: leftovers(h1, (f"sleep {seconds}",)), timeout=30, every=0.2)
    crashed.append(h1.name)
    h1.crash()


def test_a_crashed_host_is_replaced_by_the_spare_and_the_job_resumes_from_its_checkpoint(
    cluster: Cluster, crashed: list[str]
) -> None:
    name = job_name("resume")
    checkpoints = f"/tmp/ckpt-{name}"
    waiting = launch(
        cluster, name, "--hosts", "h0,h1,h2", "--spares", "h3", "--restarts", "2", "--wait",
        "examples/train_llm.py", "--steps", "200", "--log-every", "10", "--batch-size", "4", "--seq-len", "32",
        "--checkpoint-dir", checkpoints, "--checkpoint-every", "10",
    )  # fmt: skip
    try:
        h1 = cluster.hosts[1]
        wait_for("a checkpoint on h1", lambda: h1.run(["ls", checkpoints]).stdout.strip(), timeout=240)
        crashed.append(h1.name)
        crashed_at = time.time()
        h1.crash()
        out, err = waiting.communicate(timeout=600)
    finally:
        waiting.kill()

    assert waiting.returncode == 0, out + err
    status = json.loads(run_cli(cluster, "status", "--json", name).stdout)
    assert status["state"] == "succeeded", status
    recovery = status["recovery"]
    assert recovery["attempt"] == 2 and recovery["doing"] == "ended: succeeded at attempt 2", recovery
    assert list(recovery["left_out"]) == ["h1"] and re.match(r"h1 lost: no heartbeat since", recovery["left_out"]["h1"])
    assert recovery["spares_in_use"] == ["h3"] and recovery["spares_left"] == []
    assert [a["hosts"] for a in recovery["attempts"]] == [["h0", "h1", "h2"], ["h0", "h2", "h3"]]
    logs = run_cli(cluster, "logs", name, "--rank", "0").stdout
    resumed = re.search(r"^\[h0 rank 0\] resumed from step (\d+) \(attempt 2\)", logs, re.M)
    assert resumed and int(resumed.group(1)) >= 10, logs
    assert re.search(r"^\[h0 rank 0\] final loss", logs, re.M), logs
    text = run_cli(cluster, "status", name).stdout
    assert "Recovery: attempt 2 of 3; ended: succeeded at attempt 2" in text, text
    assert "h1 left out: h1 lost: no heartbeat since" in text and "spares in use: h3" in text, text
    print(
        f"\nrecovery at 3 hosts: crash to attempt 2 running {recovery['attempts'][1]['started_at'] - crashed_at:.1f} s"
    )


def test_without_spares_the_job_goes_on_with_fewer_hosts_within_nnodes(cluster: Cluster, crashed: list[str]) -> None:
    name = job_name("fewer")
    script = 'echo "attempt $LAUNCHER_ATTEMPT on $(hostname)"; exec sleep 300'
    launched = run_cli(
        cluster, "launch", "--name", name, "--heartbeat-timeout", LIMIT_S, "--hosts", "h0,h1,h2", "--nnodes", "2:3",
        "--restarts", "1", "--runner", "exec", "--", "sh", "-c", script,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    h2 = cluster.hosts[2]
    wait_for("the job on h2", lambda: leftovers(h2, ("sleep 300",)), timeout=30, every=0.2)
    crashed.append(h2.name)
    h2.crash()

    wait_for("attempt 2", lambda: record(cluster, name)["attempt"] == 2, timeout=60, every=0.2)
    for host in cluster.hosts[:2]:
        wait_for(f"attempt 2 on {host.name}", lambda h=host: leftovers(h, ("sleep 300",)), timeout=30, every=0.2)
    text = run_cli(cluster, "status", name).stdout
    assert "Recovery: attempt 2 of 2; watching attempt 2" in text, text
    assert "h2 left out: h2 lost: no heartbeat since" in text, text
    logs = run_cli(cluster, "logs", name).stdout
    assert "[h0] attempt 2 on h0" in logs and "[h1] attempt 2 on h1" in logs, logs

    killed = run_cli(cluster, "kill", name)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert all(not leftovers(h, ("sleep 300",)) for h in cluster.hosts[:2])


def test_kill_during_a_restart_leaves_nothing_running(cluster: Cluster, crashed: list[str]) -> None:
    name = job_name("midway")
    h0, h3 = cluster.hosts[0], cluster.hosts[3]
    h3.block_tcp(22)  # the spare's login hangs: the restart stays in its prepare
    sleep_on_h0_h1_then_crash_h1(
        cluster, crashed, name, 301, "--spares", "h3", "--restarts", "2", "--connect-timeout", "60"
    )
    wait_for("the restart", lambda: str(record(cluster, name)["recovery"]).startswith("restarting"), timeout=60)
    watcher = int(record(cluster, name)["watcher"]["pid"])  # type: ignore[index]

    killed = run_cli(cluster, "kill", "--connect-timeout", "2", name)

    assert record(cluster, name)["recovery"] == "stopped: the job was killed", killed.stdout + killed.stderr
    assert not Path(f"/proc/{watcher}").exists() or "Z" in Path(f"/proc/{watcher}/stat").read_text().split()[2]
    h3.unblock_all()
    for host in (h0, h3):
        assert not leftovers(host, (f"/{name}/", "sleep 301")), host.name


def test_a_spare_that_fails_its_checks_is_skipped_with_its_reason(cluster: Cluster, crashed: list[str]) -> None:
    name = job_name("skip")
    h2, h3 = cluster.hosts[2], cluster.hosts[3]
    h2.block_tcp(22)  # the first spare cannot be logged into
    sleep_on_h0_h1_then_crash_h1(
        cluster, crashed, name, 302, "--spares", "h2,h3", "--restarts", "1", "--connect-timeout", "2"
    )

    wait_for("attempt 2 on h3", lambda: leftovers(h3, ("sleep 302",)), timeout=90, every=0.2)
    seen = record(cluster, name)
    assert seen["attempt"] == 2 and [h["name"] for h in seen["hosts"]] == ["h0", "h3"], seen  # type: ignore[union-attr]
    left_out = seen["left_out"]
    assert isinstance(left_out, dict) and list(left_out) == ["h1", "h2"], left_out
    assert left_out["h2"]["reason"].startswith("failed its checks: "), left_out
    text = run_cli(cluster, "status", name).stdout
    assert "h2 left out: failed its checks: " in text and "spares in use: h3" in text, text
    assert not leftovers(h2, ("sleep 302",))
