"""Node 0's teardown port on the real test cluster: strangers' lines stop nothing.

A 3-host job runs; a stranger on the launching machine and one on another host connect to
node 0's teardown port and write what a node would (``hello 2``, ``failed 2``; ``hello 1``
and a closed connection). The job runs on, and node 0's log notes each refused peer.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time

import pytest
from cluster import Cluster, TestHost
from launcher_cli import job_name, kill_jobs_left_running, leftovers, run_cli, status_of, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

LIMIT_S = 3.0
"""``--heartbeat-timeout`` of the job: a loss or a stop would show within it."""
FORGERIES = (b"hello 2\nfailed 2\n", b"hello 1\n")
"""What a stranger writes to node 0, one connection each (then closed: the second is a
node 1 whose supervisor died, if it counted)."""

STRANGER = """
import socket, sys, time
for said in (b"hello 2\\nfailed 2\\n", b"hello 1\\n"):
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as sock:
        sock.sendall(said)
        time.sleep(0.5)
"""
"""The stranger on another host: ``FORGERIES``, as ``forge`` writes them."""


def forge(address: str, port: int) -> None:
    for said in FORGERIES:
        with socket.create_connection((address, port), timeout=10) as sock:
            sock.sendall(said)
            time.sleep(0.5)  # node 0 reads the lines before the connection closes


def run_dir_file(cluster: Cluster, host: TestHost, name: str, file: str) -> str:
    return host.read_file(cluster.node_state_dir / "launcher" / "runs" / name / host.name / file)


def refusals(cluster: Cluster, host: TestHost, name: str) -> list[str]:
    log = run_dir_file(cluster, host, name, "output.log")
    return [line for line in log.splitlines() if "teardown watcher refused a connection from" in line]


def test_strangers_on_node_0s_teardown_port_stop_nothing(cluster: Cluster) -> None:
    h0, h1, h2 = cluster.hosts[:3]
    name = job_name("trust")
    seconds = 60
    launched = run_cli(
        cluster, "launch", "--hosts", "h0,h1,h2", "--name", name, "--runner", "exec",
        "--heartbeat-timeout", str(LIMIT_S), "sleep", str(seconds),
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    for host in (h0, h1, h2):
        wait_for(f"sleep on {host.name}", lambda h=host: leftovers(h, (f"sleep {seconds}",)), timeout=30, every=0.1)
    teardown = json.loads(run_dir_file(cluster, h0, name, "spec.json"))["teardown"]
    address, port, secret = teardown["address"], teardown["port"], teardown["secret"]
    assert len(secret) == 64
    # Node 0 listens where the others reach it, not on every interface.
    listening = h0.run(["ss", "-Htln", f"sport = :{port}"]).stdout.split()
    assert f"{address}:{port}" in listening, listening
    # The secret is on no command line of any host.
    assert all(leftovers(host, (secret,)) == [] for host in (h0, h1, h2))

    forge(address, port)  # from the launching machine
    stranger = h1.run([sys.executable, "-c", STRANGER, address, str(port)])  # from another host
    assert stranger.returncode == 0, stranger.stderr

    wait_for("node 0 to note the four strangers", lambda: len(refusals(cluster, h0, name)) >= 4, timeout=20)
    time.sleep(LIMIT_S)  # a loss or a stop would have come by now
    noted = refusals(cluster, h0, name)
    assert len(noted) == 4, noted  # once each
    hosts = status_of(cluster, name)["hosts"]
    assert [(h["host"], h["state"]) for h in hosts] == [("h0", "running"), ("h1", "running"), ("h2", "running")]
    assert all(leftovers(host, (f"sleep {seconds}",)) for host in (h0, h1, h2))
    sources = {re.search(r" from ([0-9.]+):[0-9]+: ", line).group(1) for line in noted}  # type: ignore[union-attr]
    assert sources == {cluster.gateway, h1.address}, noted

    killed = run_cli(cluster, "kill", name)
    assert killed.returncode == 0, killed.stdout + killed.stderr


def test_the_launch_sends_each_job_its_own_secret(cluster: Cluster) -> None:
    """Two jobs on the same hosts: two secrets (one job's cannot speak for the other's)."""
    names = [job_name("secret"), job_name("secret")]
    for name in names:
        launched = run_cli(
            cluster, "launch", "--hosts", "h0,h1", "--name", name, "--runner", "exec", "sleep", "30"
        )  # fmt: skip
        assert launched.returncode == 0, launched.stderr
    h0, h1 = cluster.hosts[:2]
    specs = [json.loads(run_dir_file(cluster, host, name, "spec.json")) for name in names for host in (h0, h1)]
    secrets = [spec["teardown"]["secret"] for spec in specs]
    assert secrets[0] == secrets[1] and secrets[2] == secrets[3] and secrets[0] != secrets[2]
    for name in names:
        assert run_cli(cluster, "kill", name).returncode == 0
