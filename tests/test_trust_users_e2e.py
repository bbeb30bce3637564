"""Two users of one cluster: a login user without root runs the launcher next to root.

The test cluster's second user (``start_cluster(..., second_user=True)``, see
``cluster_user.py``) launches, follows, reads the status of and kills its jobs with its
own key and home, and nothing of it lands outside that home (its state directory is
``~/.local/state``, on the launching side and on every host). Jobs of the same name,
one root's and one the user's, on the same hosts, do not see each other.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, TestUser
from launcher_cli import REPO, job_name, run_cli, status_of, wait_for

pytestmark = pytest.mark.e2e

HOSTS = "h0,h1"
ENDED = ("succeeded", "failed", "killed")
WRITABLE_BY_ANYONE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
"""Where a user without root can write outside its home: this machine's world-writable
directories (``find / -xdev -type d -perm -0002``) and /dev/shm. The hosts share all but
their /tmp."""


@pytest.fixture
def user(user_cluster: Cluster) -> TestUser:
    assert user_cluster.user is not None
    return user_cluster.user


@pytest.fixture(autouse=True)
def kill_jobs_left_running(user_cluster: Cluster, user: TestUser) -> Iterator[None]:
    """Every job a test launched, root's or the user's, is killed afterwards, pass or fail,
    unless it was last seen ended (one kill costs seconds here)."""
    yield
    for records, kill in [
        (user.home / ".local" / "state" / "launcher" / "jobs", functools.partial(run_as, user)),
        (user_cluster.launcher_state_dir / "launcher" / "jobs", functools.partial(run_cli, user_cluster)),
    ]:
        for record in records.glob("*.json"):
            if json.loads(record.read_text()).get("last_state") not in ENDED:
                kill("kill", "--grace", "0", record.stem)


def run_as(user: TestUser, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The launcher CLI as ``user``: its uid and groups, its HOME, no XDG_STATE_HOME."""
    return user.run([sys.executable, "-m", "launcher", *args], cwd=REPO, timeout=timeout)


def status_as(user: TestUser, name: str) -> dict[str, Any]:
    result = run_as(user, "status", "--json", name)
    assert result.stdout, result.stderr
    status: dict[str, Any] = json.loads(result.stdout)
    return status


def files_outside_home(cluster: Cluster, user: TestUser) -> set[str]:
    """What ``user`` owns where anyone may write, but for its home: on this machine, and in
    each host's own /tmp (as ``h0:/tmp/...``).

    tmux's socket directory (``/tmp/tmux-<uid>``, 0700) on a host is the user's tmux server,
    as tmux places it for every user; it does not count.
    """
    found = set()
    local = subprocess.run(
        ["find", *WRITABLE_BY_ANYONE, "-xdev", "-user", str(user.uid)], capture_output=True, text=True, check=False
    )
    found |= {path for path in local.stdout.splitlines() if not Path(path).is_relative_to(user.home)}
    tmux_dir = f"/tmp/tmux-{user.uid}"
    for host in cluster.hosts:
        inside = host.run(["find", "/tmp", "-xdev", "-user", str(user.uid)])
        assert inside.returncode == 0, inside.stderr
        found |= {f"{host.name}:{path}" for path in inside.stdout.splitlines() if not path.startswith(tmux_dir)}
    return found


def processes_of(cluster: Cluster, user: TestUser) -> list[str]:
    """``host: command line`` of every process of ``user`` on the hosts, but its tmux server
    (which stays up for the user's next job, as tmux does)."""
    found = []
    for host in cluster.hosts:
        for pid, command in host.processes():
            try:
                uid = Path(f"/proc/{pid}").stat().st_uid
            except FileNotFoundError:
                continue
            if uid == user.uid and not command.split(" ", 1)[0].endswith("tmux"):
                found.append(f"{host.name}: {command}")
    return found


def hosts_printing(logs: str, what: str = "sleeper") -> set[str]:
    """The hosts with a line of ``what`` (the script's first word) in ``logs``."""
    return set(re.findall(rf"^\[(h\d) rank \d\] {what} ", logs, re.M))


def test_user_launches_follows_and_reads_status_in_its_own_home(user_cluster: Cluster, user: TestUser) -> None:
    before = files_outside_home(user_cluster, user)
    name = job_name("mine")

    launched = run_as(user, "launch", "--hosts", HOSTS, "--name", name, "examples/distributed_sum.py")
    assert launched.returncode == 0, launched.stderr
    followed = run_as(user, "logs", "--follow", name)
    status = status_as(user, name)

    assert followed.returncode == 0, followed.stderr
    sums = re.findall(
        r"^\[(h\d) rank (\d)\] distributed_sum: .* world_size=2 device=cpu sum=3 ok$", followed.stdout, re.M
    )
    assert sorted(sums) == [("h0", "0"), ("h1", "1")], followed.stdout
    assert status["state"] == "succeeded", status
    runs = user.home / ".local" / "state" / "launcher" / "runs" / name
    assert sorted(path.name for path in runs.iterdir() if path.is_dir()) == ["h0", "h1"]
    assert not (user_cluster.node_state_dir / "launcher" / "runs" / name).exists()  # root's
    assert files_outside_home(user_cluster, user) - before == set()


def test_user_kills_a_running_job_and_nothing_of_it_remains(user_cluster: Cluster, user: TestUser) -> None:
    before = files_outside_home(user_cluster, user)
    name = job_name("long")
    launched = run_as(user, "launch", "--hosts", HOSTS, "--name", name, "tests/scripts/sleeper.py")
    assert launched.returncode == 0, launched.stderr
    wait_for(
        "a line of the sleeper on each host", lambda: hosts_printing(run_as(user, "logs", name).stdout) == {"h0", "h1"}
    )

    killed = run_as(user, "kill", "--grace", "0.5", name)

    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert [host["state"] for host in status_as(user, name)["hosts"]] == ["killed", "killed"]
    assert processes_of(user_cluster, user) == []
    assert files_outside_home(user_cluster, user) - before == set()


def test_same_job_name_for_two_users_and_kill_all_keeps_to_its_own(user_cluster: Cluster, user: TestUser) -> None:
    name = job_name("same")
    # Root's job prints "sleeper ...", the user's "ticker ...": each must read only its own.
    by_root = run_cli(user_cluster, "launch", "--hosts", HOSTS, "--name", name, "tests/scripts/sleeper.py")
    assert by_root.returncode == 0, by_root.stderr
    slow_ticker = ["-e", "TICKS=100000", "-e", "TICK_EVERY=0.5", "tests/scripts/ticker.py"]
    by_user = run_as(user, "launch", "--hosts", HOSTS, "--name", name, *slow_ticker)
    assert by_user.returncode == 0, by_user.stderr
    both = {"h0", "h1"}
    wait_for("root's job on both hosts", lambda: hosts_printing(run_cli(user_cluster, "logs", name).stdout) == both)
    wait_for(
        "the user's job on both hosts", lambda: hosts_printing(run_as(user, "logs", name).stdout, "ticker") == both
    )

    roots_logs, users_logs = run_cli(user_cluster, "logs", name).stdout, run_as(user, "logs", name).stdout
    assert hosts_printing(roots_logs, "ticker") == set() and hosts_printing(users_logs, "sleeper") == set()
    assert status_as(user, name)["state"] == "running"
    assert status_of(user_cluster, name)["state"] == "running"

    killed = run_as(user, "kill", "--all", "--hosts", HOSTS, "--grace", "0.5")

    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert status_as(user, name)["state"] != "running"
    assert processes_of(user_cluster, user) == []
    assert status_of(user_cluster, name)["state"] == "running"
    assert [host["state"] for host in status_of(user_cluster, name)["hosts"]] == ["running", "running"]
