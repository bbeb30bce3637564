"""Faults on the real test cluster: a host that dies mid-job, a cut that heals, node 0 cut
off, a launcher SIGKILLed mid-launch, a reboot. Each asserts what the user sees (status,
its exit code, the root cause) and that nothing of the job is left on any host.

The jobs are ``--runner exec -- sleep N`` (no torch: the supervisors' heartbeats are what
is tested), with a short ``--heartbeat-timeout`` to keep each test within seconds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, TestHost
from launcher_cli import REPO, job_name, kill_jobs_left_running, leftovers, run_cli, status_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

LIMIT_S = 3.0
"""``--heartbeat-timeout`` of these jobs."""
SLACK_S = 10.0
"""On top of the limit: beats every LIMIT_S / 5, SIGTERM, the supervisor's record, a
status over SSH, on two cores shared with every host."""


def launch_sleep(cluster: Cluster, name: str, seconds: int, hosts: str = "h0,h1,h2") -> None:
    launched = run_cli(
        cluster, "launch", "--hosts", hosts, "--name", name, "--runner", "exec",
        "--heartbeat-timeout", str(LIMIT_S), "sleep", str(seconds),
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    for host in cluster.hosts:
        wait_for(f"sleep on {host.name}", lambda h=host: leftovers(h, (f"sleep {seconds}",)), timeout=30, every=0.1)


def states(cluster: Cluster, name: str) -> dict[str, str]:
    return {h["host"]: h["state"] for h in status_of(cluster, name)["hosts"]}


def nothing_left(host: TestHost, name: str, seconds: int) -> bool:
    return not leftovers(host, (f"/{name}/", f"sleep {seconds}"))


def wait_until_stopped(cluster: Cluster, hosts: list[TestHost], name: str, seconds: int) -> None:
    """Every one of ``hosts`` ends the job within the limit and its slack; else say what each
    node's supervisor wrote (its notes in output.log) and what still runs."""
    try:
        wait_for(
            f"the job to stop on {[h.name for h in hosts]}",
            lambda: all(nothing_left(h, name, seconds) for h in hosts),
            timeout=LIMIT_S + SLACK_S,
            every=0.2,
        )
    except AssertionError as exc:
        runs = Path(cluster.node_state_dir) / "launcher" / "runs" / name
        notes = {p.parent.name: p.read_text()[-2000:] for p in runs.glob("*/output.log")}
        left = {h.name: leftovers(h, (f"/{name}/", f"sleep {seconds}")) for h in hosts}
        sockets = {h.name: h.run(["ss", "-Htnp"]).stdout for h in hosts if h.is_up()}
        raise AssertionError(f"{exc}; still running: {left}; notes: {notes}; sockets: {sockets}") from None


@pytest.fixture
def revive(cluster: Cluster) -> Iterator[list[str]]:
    """Hosts a test crashed or cut off come back afterwards, for the tests that follow."""
    touched: list[str] = []
    yield touched
    for name in touched:
        host = next(h for h in cluster.hosts if h.name == name)
        host.set_link(True)
        if not host.is_up():
            cluster.reboot(host)


def test_a_crashed_host_is_lost_the_others_stop_and_a_reboot_still_reads_lost(
    cluster: Cluster, revive: list[str]
) -> None:
    name = job_name("crash")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "launcher", "launch", "--hosts", "h0,h1,h2", "--name", name, "--runner", "exec",
         "--heartbeat-timeout", str(LIMIT_S), "--wait", "sleep", "601"],
        cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    h2 = cluster.hosts[2]
    revive.append(h2.name)
    following: subprocess.Popen[str] | None = None
    try:
        for host in cluster.hosts:
            wait_for(f"sleep on {host.name}", lambda h=host: leftovers(h, ("sleep 601",)), timeout=30, every=0.1)

        following = subprocess.Popen(
            [sys.executable, "-m", "launcher", "logs", "--follow", "--keepalive", "1", name],
            cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        crashed_at = time.time()
        h2.crash()
        wait_until_stopped(cluster, cluster.hosts[:2], name, 601)
        assert time.time() - crashed_at >= LIMIT_S * 0.8  # by the heartbeat limit, not sooner
        # launch --wait and logs --follow do not wait out their reconnect window for the lost host.
        out, err = waiting.communicate(timeout=SLACK_S + 20)
        _, followed = following.communicate(timeout=SLACK_S)
    finally:
        waiting.kill()
        if following is not None:
            following.kill()
    assert waiting.returncode == 1, out + err
    assert "h2: lost: the other hosts stopped hearing from it" in err, err
    assert "h2: lost: the other hosts stopped hearing from it" in followed, followed
    assert re.search(r"First failure: h2 lost: no heartbeat since", " ".join(out.split())), out

    text = run_cli(cluster, "status", "--connect-timeout", "2", name)
    assert text.returncode == 1, text.stdout
    flat = " ".join(text.stdout.split())
    assert re.search(r"First failure: h2 lost: no heartbeat since \d\d:\d\d:\d\d", flat), text.stdout
    status = json.loads(run_cli(cluster, "status", "--json", "--connect-timeout", "2", name).stdout)
    hosts = {h["host"]: h for h in status["hosts"]}
    assert status["state"] == "failed"
    assert hosts["h2"]["state"] == "lost" and hosts["h2"]["last_heard"] <= crashed_at + 0.5, hosts["h2"]
    assert hosts["h2"]["last_heard"] >= crashed_at - LIMIT_S
    assert [hosts[h]["state"] for h in ("h0", "h1")] == ["failed", "failed"]
    assert all(hosts[h]["error"].startswith("stopped: h2 lost: no heartbeat since") for h in ("h0", "h1"))
    assert status["root_cause"]["host"] == "h2" and status["root_cause"]["lost"] is True

    # Back up with a fresh process table: its supervisor vanished without exit.json.
    rebooted = cluster.reboot(h2)
    assert nothing_left(rebooted, name, 601)
    after = status_of(cluster, name)
    assert {h["host"]: h["state"] for h in after["hosts"]}["h2"] == "lost", after
    assert after["root_cause"]["host"] == "h2"


def test_a_cut_that_heals_within_the_limit_stops_nothing(cluster: Cluster, revive: list[str]) -> None:
    name = job_name("heal")
    launch_sleep(cluster, name, 602)
    h1 = cluster.hosts[1]
    revive.append(h1.name)

    h1.set_link(False)
    # 1.8 s: TCP's retransmission backoff alone (0.2, 0.6, 1.4, 3 s) could bring the beats
    # that waited after the limit; the probes on new connections are heard within a beat.
    time.sleep(LIMIT_S * 0.6)
    h1.set_link(True)
    time.sleep(LIMIT_S * 1.5)  # past the limit since the cut began: the late beats arrived

    assert states(cluster, name) == {"h0": "running", "h1": "running", "h2": "running"}
    assert run_cli(cluster, "status", name).returncode == 0
    killed = run_cli(cluster, "kill", "--grace", "1", name)
    assert killed.returncode == 0, killed.stdout
    assert all(nothing_left(h, name, 602) for h in cluster.hosts)


def test_node_0_cut_off_is_lost_and_every_host_stops(cluster: Cluster, revive: list[str]) -> None:
    name = job_name("node0")
    launch_sleep(cluster, name, 603)
    h0 = cluster.hosts[0]
    revive.append(h0.name)

    h0.set_link(False)
    try:
        # h1 and h2 stop for node 0's silence; h0 for theirs: nothing runs anywhere.
        wait_until_stopped(cluster, cluster.hosts, name, 603)
        cut = run_cli(cluster, "status", "--connect-timeout", "2", name)
        assert cut.returncode == 1
        assert "unreachable" in cut.stdout or "lost" in cut.stdout
    finally:
        h0.set_link(True)
    status = status_of(cluster, name)
    assert {h["host"]: h["state"] for h in status["hosts"]}["h0"] == "lost", status
    assert status["root_cause"]["exception"].startswith("h0 lost: no heartbeat since")


SLOW_AGENT = """\
#!/bin/bash
# The interpreter on every host; on h2 the node agent starts {delay} s late.
case " $* " in *"# launcher.node serve"*) [ "$(hostname)" = h2 ] && sleep {delay} ;; esac
exec -a "$0" {python} "$@"
"""


def test_a_launcher_killed_mid_launch_leaves_nothing_running(cluster: Cluster) -> None:
    """h0 and h1 have started (their supervisors hold the command for the commit) when
    the launcher is SIGKILLed, waiting for h2: what started ends by itself, at once."""
    python = Path(cluster.project_dir) / "slow-agent-python"
    python.write_text(SLOW_AGENT.format(delay=4, python=sys.executable))
    python.chmod(0o755)
    name = job_name("sigkill")
    runs = Path(cluster.node_state_dir) / "launcher" / "runs" / name
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launcher", "launch", "--hosts", "h0,h1,h2", "--name", name,
         "--python", str(python), "--runner", "exec", "sleep", "604"],
        cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for("h0 and h1 to hold", lambda: all((runs / h / "held").exists() for h in ("h0", "h1")), 60, 0.05)
        launcher.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        launcher.communicate(timeout=10)
    finally:
        launcher.kill()
    wait_for(
        "nothing of the job on any host",
        lambda: all(nothing_left(h, name, 604) for h in cluster.hosts),
        timeout=10,
        every=0.1,
    )
    assert time.monotonic() - killed_at < 10
    assert not any((runs / h / "started.json").exists() for h in ("h0", "h1", "h2")), "a command ran"
    for host in ("h0", "h1"):
        record: dict[str, Any] = json.loads((runs / host / "exit.json").read_text())
        assert record["error"].startswith("launch abandoned: the launcher went away"), record
