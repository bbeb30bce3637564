"""The test cluster itself: real sshd in namespaces, isolated hosts, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest
from cluster import REGISTRY_DIR, Cluster, TestHost, start_cluster

pytestmark = pytest.mark.e2e


def ssh(cluster: Cluster, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(cluster.ssh_config), "-o", "BatchMode=yes", host, command],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_openssh_runs_hostname_on_h1(cluster: Cluster) -> None:
    result = ssh(cluster, "h1", "hostname")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "h1\n"


def test_asyncssh_logs_in_with_only_home_set(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the launcher relies on: ~/.ssh/config, known_hosts and the key, from HOME alone.
    monkeypatch.setenv("HOME", str(cluster.home))

    async def hostname_and_address() -> str:
        async with asyncssh.connect("h2") as conn:
            command = "hostname; python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'"
            result = await conn.run(command, check=True, timeout=20)
            return str(result.stdout)

    assert asyncio.run(hostname_and_address()).split() == ["h2", cluster.hosts[2].address]


def test_each_host_sees_only_its_own_processes(cluster: Cluster) -> None:
    for host in cluster.hosts:
        processes = host.processes()
        command_lines = [command for _, command in processes]
        assert os.getpid() not in [pid for pid, _ in processes]
        assert any(f"/{host.name}.conf" in command for command in command_lines), command_lines
        assert not any(f"/{other.name}.conf" in c for other in cluster.hosts if other != host for c in command_lines)

        inside = host.run(["ps", "-e", "-o", "pid=,comm="])
        assert inside.returncode == 0, inside.stderr
        pid_1 = inside.stdout.split()[:2]
        assert pid_1 == ["1", "sshd"]
        # sshd, maybe a probe's preauth child, nsenter and ps: nothing of the root namespace.
        assert len(inside.stdout.splitlines()) < 10, inside.stdout


def test_tmp_is_private_to_each_host(cluster: Cluster) -> None:
    h0, h1 = cluster.hosts[0], cluster.hosts[1]
    marker = f"private-{os.getpid()}"

    assert h0.run(["sh", "-c", f"echo secret > /tmp/{marker}"]).returncode == 0

    assert h0.run(["cat", f"/tmp/{marker}"]).stdout == "secret\n"
    assert h1.run(["test", "-e", f"/tmp/{marker}"]).returncode == 1
    assert not Path("/tmp", marker).exists()
    # ...while the workdir (under /tmp here) is shared, like an NFS home.
    assert h1.run(["test", "-d", str(cluster.node_state_dir)]).returncode == 0


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    small = start_cluster(2, tmp_path)
    hosts = list(small.hosts)
    assert all(host.processes() for host in hosts)

    small.close()
    small.close()  # idempotent

    assert_gone(tmp_path, small.token, hosts)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options",
    [{}, {"networks": 2, "isolate_first_network": True}, {"bastion": True, "shared_disk": False}],
    ids=["default", "two-networks", "bastion-no-shared-disk"],
)
def test_stale_cluster_of_a_crashed_run_is_removed(tmp_path: Path, options: dict[str, object]) -> None:
    # A child process starts a cluster and dies without closing it. The helper is a child
    # subreaper, so the orphaned hosts' processes are reaped rather than left as zombies.
    helper = subprocess.run(
        [sys.executable, "-c", CRASH_THEN_CLEAN, str(tmp_path), json.dumps(options)],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert helper.returncode == 0, helper.stderr
    report = json.loads(helper.stdout)

    assert report["token"] in report["removed"]
    hosts = [TestHost(**host) for host in report["hosts"]]
    assert_gone(tmp_path, report["token"], hosts)
    assert list(tmp_path.iterdir()) == []


CRASH_THEN_CLEAN = """
import ctypes, dataclasses, json, os, sys
from pathlib import Path
from cluster import remove_stale_clusters, start_cluster

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
read_end, write_end = os.pipe()
creator = os.fork()
if creator == 0:
    cluster = start_cluster(1, Path(sys.argv[1]), **json.loads(sys.argv[2]))
    hosts = [dataclasses.asdict(host) for host in [*cluster.hosts, *filter(None, [cluster.bastion])]]
    os.write(write_end, json.dumps({"hosts": hosts, "token": cluster.token}).encode())
    os._exit(1)  # crash: no close()
os.close(write_end)
report = json.loads(os.fdopen(read_end).read())
os.waitpid(creator, 0)
report["removed"] = remove_stale_clusters()
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print(json.dumps(report))
"""


def assert_gone(workdir: Path, token: str, hosts: list[TestHost]) -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    link_names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    for host in hosts:
        assert host.netns not in namespaces.split()
        assert not set(host.links) & link_names
        assert host.processes() == []
    assert not any(token in name for name in link_names)  # the bridges
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert token not in routes
    # Every process a cluster starts (unshare, sshd) names a file of its workdir.
    assert [command for command in all_command_lines() if str(workdir) in command] == []
    assert not (REGISTRY_DIR / f"{token}.json").exists()


def all_command_lines() -> list[str]:
    command_lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return command_lines
