"""What already held before the fault work and must keep holding with held starts and
heartbeats: a changed host key is refused, two launches of one name race to exactly one
winner, ``kill --all`` spares the user's own tmux sessions."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest
from cluster import Cluster
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from launcher_cli import REPO, assert_one_line_error, job_name, kill_jobs_left_running, leftovers, run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]


def test_a_changed_host_key_is_refused_and_nothing_starts(cluster: Cluster) -> None:
    known_hosts = cluster.home / ".ssh" / "known_hosts"
    saved = known_hosts.read_text()
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    other_key = other.decode().split()[1]
    assert base64.b64decode(other_key)
    changed = [
        f"{line.split()[0]} {line.split()[1]} {other_key}" if line.split()[0].split(",")[0] == "h1" else line
        for line in saved.splitlines()
    ]
    assert changed != saved.splitlines(), "no known_hosts line for h1"
    name = job_name("hostkey")
    known_hosts.write_text("\n".join(changed) + "\n")
    try:
        result = run_cli(cluster, "launch", "--hosts", "h0,h1", "--name", name, "--runner", "exec", "sleep", "608")
    finally:
        known_hosts.write_text(saved)
    assert_one_line_error(result, "h1: the host key changed", "possible spoofing", "`ssh-keygen -R h1`")
    assert "ssh-keyscan" not in result.stderr  # never pushed to trust the new key
    for host in cluster.hosts:
        assert leftovers(host, ("sleep 608", f"/{name}/")) == []


def test_two_launches_of_one_name_race_to_one_winner(cluster: Cluster) -> None:
    name = job_name("race")
    argv = [sys.executable, "-m", "launcher", "launch", "--hosts", "h0,h1,h2", "--name", name,
            "--runner", "exec", "sleep", "609"]  # fmt: skip
    racers = [
        subprocess.Popen(argv, cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [(r.wait(timeout=120), *r.communicate()) for r in racers]
    codes = sorted(code for code, _, _ in outcomes)
    assert codes == [0, 1], outcomes
    loser = next(err for code, _, err in outcomes if code == 1)
    assert "Traceback" not in loser and re.search(r"already running|duplicate", loser), loser
    # The winner's job runs whole: on every host, its command.
    for host in cluster.hosts:
        wait_for(f"the winner on {host.name}", lambda h=host: leftovers(h, ("sleep 609",)), timeout=30, every=0.1)
    status = run_cli(cluster, "status", name)
    assert status.returncode == 0, status.stdout
    assert run_cli(cluster, "kill", "--grace", "1", name).returncode == 0
    for host in cluster.hosts:
        assert leftovers(host, ("sleep 609", f"/{name}/")) == []


def test_kill_all_spares_the_users_own_tmux_sessions(cluster: Cluster) -> None:
    h2 = cluster.hosts[2]
    mine = h2.run(["tmux", "new-session", "-d", "-s", "users-own", "sleep", "610"])
    assert mine.returncode == 0, mine.stderr
    try:
        name = job_name("spare")
        launched = run_cli(cluster, "launch", "--hosts", "h2,", "--name", name, "--runner", "exec", "sleep", "611")
        assert launched.returncode == 0, launched.stderr
        killed = run_cli(cluster, "kill", "--all", "--grace", "1", "--hosts", "h2,")
        assert killed.returncode == 0, killed.stdout
        assert leftovers(h2, ("sleep 611",)) == []
        assert leftovers(h2, ("sleep 610",)), "the user's own session was killed"
        assert h2.run(["tmux", "has-session", "-t", "users-own"]).returncode == 0
    finally:
        h2.run(["tmux", "kill-session", "-t", "users-own"])
