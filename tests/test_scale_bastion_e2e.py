"""32 hosts reached only through one bastion whose sshd keeps the default MaxStartups
(10:30:100): every launcher connection to them goes over one SSH connection to the bastion.
Opened one by one (as ``ProxyJump`` does for each ssh), 32 handshakes at once would
exceed what the bastion accepts, and it would drop some."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from launcher_cli import leftovers, run_cli, wait_for

from launcher.hosts.sources import resolve_hosts
from launcher.transport.agent import NodeAgent, SshOptions, open_agent

pytestmark = pytest.mark.e2e

HOSTS = 32


@pytest.fixture(scope="module")
def behind_bastion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(HOSTS, tmp_path_factory.mktemp("bastion"), bastion=True) as cluster:
        yield cluster


def bastion_ssh_connections(cluster: Cluster) -> int:
    """Established TCP connections to the bastion's sshd (from the launching side)."""
    assert cluster.bastion is not None
    listing = cluster.bastion.run(["ss", "-Htn", "state", "established", "( sport = :22 )"])
    assert listing.returncode == 0, listing.stderr
    return len(listing.stdout.splitlines())


def test_every_host_behind_the_bastion_shares_one_connection_to_it(
    behind_bastion: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(behind_bastion.home))
    hosts = resolve_hosts(",".join(h.name for h in behind_bastion.hosts))

    async def open_all() -> tuple[list[str], int]:
        agents: list[NodeAgent] = await asyncio.gather(*(open_agent(h, SshOptions()) for h in hosts))
        try:
            connections = await asyncio.to_thread(bastion_ssh_connections, behind_bastion)
            return [a.hello.hostname for a in agents if a.hello is not None], connections
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    names, connections = asyncio.run(open_all())
    assert names == [h.name for h in behind_bastion.hosts]
    assert connections == 1


def test_launch_status_and_kill_on_32_hosts_behind_the_bastion(behind_bastion: Cluster) -> None:
    hosts = behind_bastion.write_hosts_file([h.name for h in behind_bastion.hosts], name="behind")
    name = "behind-bastion"
    env = {"XDG_STATE_HOME": str(behind_bastion.launcher_state_dir)}
    launched = run_cli(behind_bastion, "launch", "--hosts", str(hosts), "--name", name, "--runner", "exec",
                       "sleep", "605", **env)  # fmt: skip
    try:
        assert launched.returncode == 0, launched.stderr
        assert f"Launched {name} on {HOSTS} host(s)" in launched.stdout
        status = run_cli(behind_bastion, "status", name, **env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert len(re.findall(r"\brunning\b", status.stdout)) >= HOSTS
    finally:
        killed = run_cli(behind_bastion, "kill", "--grace", "1", name, **env)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert all(
        wait_for(f"nothing on {h.name}", lambda h=h: not leftovers(h, ("sleep 605",)), timeout=20)
        for h in behind_bastion.hosts
    )
    assert os.path.exists(Path(behind_bastion.launcher_state_dir) / "launcher" / "jobs" / f"{name}.json")
