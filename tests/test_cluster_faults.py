"""The test cluster's options: no shared disk, crashes and reboots, cuts, many hosts, two networks,
firewalls and a bastion."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from cluster import ALT_SSH_PORT, MAX_HOSTS, Cluster, TestHost, _Layout, start_cluster

pytestmark = pytest.mark.e2e


def ssh(cluster: Cluster, host: str, command: str, connect_timeout: int = 5) -> subprocess.CompletedProcess[str]:
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}"]
    return subprocess.run(
        ["ssh", "-F", str(cluster.ssh_config), *options, host, command],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def unshared(tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(2, tmp_path, shared_disk=False) as cluster:
        yield cluster


def test_default_cluster_shares_the_project_dir(cluster: Cluster) -> None:
    marker = cluster.project_dir / f"shared-{os.getpid()}"
    marker.write_text("code\n")
    try:
        assert all(host.read_file(marker) == "code\n" for host in cluster.hosts)
    finally:
        marker.unlink()


def test_hosts_without_a_shared_disk_start_with_an_empty_project_dir(unshared: Cluster) -> None:
    (unshared.project_dir / "train.py").write_text("print('launching side')\n")

    for host in unshared.hosts:
        assert host.exists(unshared.project_dir)
        assert host.run(["ls", "-A", str(unshared.project_dir)]).stdout == ""
        assert host.run(["ls", "-A", str(unshared.node_state_dir)]).stdout == ""


def test_what_a_host_writes_only_it_sees(unshared: Cluster) -> None:
    h0, h1 = unshared.hosts
    h0.write_file(unshared.project_dir / "sub" / "train.py", "print('h0')\n")
    # What an SSH session writes to its XDG_STATE_HOME, as the launcher's node does.
    result = ssh(unshared, "h0", 'mkdir -p "$XDG_STATE_HOME/launcher" && echo h0 > "$XDG_STATE_HOME/launcher/mark"')
    assert result.returncode == 0, result.stderr
    mark = unshared.node_state_dir / "launcher" / "mark"

    assert h0.read_file(unshared.project_dir / "sub" / "train.py") == "print('h0')\n"
    assert h0.read_file(mark) == "h0\n"
    assert not h1.exists(unshared.project_dir / "sub")
    assert not h1.exists(mark)
    assert not (unshared.project_dir / "sub").exists()
    assert not mark.exists()
    # Nor can a host find the others' disks under the (shared) workdir.
    assert h1.run(["ls", "-A", str(unshared.workdir / "disks")]).stdout == ""


def test_hosts_without_a_shared_disk_still_share_python(unshared: Cluster) -> None:
    for host in unshared.hosts:
        result = host.run([sys.executable, "-c", "import asyncssh, torch; print('ok')"], timeout=60)
        assert result.stdout == "ok\n", result.stderr
        assert host.exists(Path(__file__).resolve())  # and the repo


def test_one_host_gets_another_python_through_a_wrapper(unshared: Cluster) -> None:
    h0, h1 = unshared.hosts
    wrapper = unshared.project_dir / "python"
    h0.write_file(wrapper, f'#!/bin/sh\nexec {sys.executable} "$@"\n', mode=0o755)
    h1.write_file(wrapper, "#!/bin/sh\necho 'no python here' >&2\nexit 127\n", mode=0o755)

    assert h0.run([str(wrapper), "-c", "print(6 * 7)"]).stdout == "42\n"
    assert h1.run([str(wrapper), "-c", "print(6 * 7)"]).returncode == 127


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(2, tmp_path, shared_disk=False) as cluster:
        yield cluster


def accepts_tcp(address: str, port: int = 22, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_sleep(cluster: Cluster, host: TestHost) -> None:
    """Start a process on ``host`` that outlives the SSH session, and wait until it runs."""
    started = ssh(cluster, host.name, "setsid sleep 600 </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 10
    while not sleeps(host):
        assert time.monotonic() < deadline, host.processes()
        time.sleep(0.01)


def sleeps(host: TestHost) -> bool:
    return any(command == "sleep 600" for _, command in host.processes())


def test_crash_kills_every_process_of_the_host_and_only_that_host(pair: Cluster) -> None:
    h0, h1 = pair.hosts
    start_sleep(pair, h0)
    start_sleep(pair, h1)

    h0.crash()

    assert h0.processes() == []
    assert not h0.is_up()
    assert not accepts_tcp(h0.address)
    assert ssh(pair, "h0", "true", connect_timeout=1).returncode == 255
    assert sleeps(h1)
    assert ssh(pair, "h1", "hostname").stdout == "h1\n"


def test_a_crashed_host_reboots_with_a_fresh_tmp_and_the_same_disk(pair: Cluster) -> None:
    h0 = pair.hosts[0]
    h0.write_file("/tmp/before-crash", "gone\n")
    h0.write_file(pair.project_dir / "kept", "kept\n")
    h0.crash()

    rebooted = pair.reboot(h0)

    assert pair.hosts[0] is rebooted
    assert (rebooted.name, rebooted.address, rebooted.netns) == (h0.name, h0.address, h0.netns)
    assert rebooted.is_up()
    assert not h0.is_up()
    result = ssh(pair, "h0", "hostname; ls -A /tmp")
    assert result.returncode == 0, result.stderr
    # A fresh /tmp holds only the way to the workdir, when the workdir is under /tmp.
    fresh = [pair.workdir.relative_to("/tmp").parts[0]] if pair.workdir.is_relative_to("/tmp") else []
    assert result.stdout.split() == ["h0", *fresh]
    assert not rebooted.exists("/tmp/before-crash")
    assert rebooted.read_file(pair.project_dir / "kept") == "kept\n"


def test_a_running_host_reboots(pair: Cluster) -> None:
    h1 = pair.hosts[1]
    start_sleep(pair, h1)

    rebooted = pair.reboot("h1")

    assert not h1.is_up()
    assert not sleeps(rebooted)
    assert pair.hosts[1] is rebooted
    assert ssh(pair, "h1", "hostname").stdout == "h1\n"


def test_close_after_a_crash_leaves_nothing_behind(tmp_path: Path) -> None:
    cluster = start_cluster(2, tmp_path)
    hosts = list(cluster.hosts)
    hosts[1].crash()
    cluster.reboot(hosts[0])  # a running host, rebooted

    cluster.close()

    assert [host.processes() for host in [*hosts, *cluster.hosts]] == [[]] * 4
    assert list(tmp_path.iterdir()) == []


def test_a_cut_link_blocks_tcp_until_it_heals(pair: Cluster) -> None:
    h0, h1 = pair.hosts
    assert accepts_tcp(h0.address)

    h0.set_link(False)
    try:
        assert not accepts_tcp(h0.address)
        assert connects(h1, h0.address, timeout=1) is False
    finally:
        h0.set_link(True)

    # Healed: a SYN lost as the link came up is sent again after 1 s, so allow for one.
    assert accepts_tcp(h0.address, timeout=3)
    assert connects(h1, h0.address, timeout=3) is True


def connects(host: TestHost, address: str, port: int = 22, timeout: float = 2) -> bool:
    """Whether a TCP connection from inside ``host`` to ``address:port`` is accepted."""
    result = host.run([sys.executable, "-c", CONNECT, address, str(port), str(timeout)])
    assert result.stdout in ("connected\n", "blocked\n"), result.stderr
    return result.stdout == "connected\n"


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError:
    print("blocked")
"""


def test_a_cluster_of_max_hosts_fits_the_names_and_addresses() -> None:
    layout = _Layout.plan(MAX_HOSTS, "abcdef", ipaddress.IPv4Network("10.9.8.0/24"))

    links = [host.link for host in layout.hosts] + [layout.bridge]
    assert layout.hosts[-1].link == f"lnch-abcdef-{MAX_HOSTS - 1}"
    assert max(len(name) for name in links) <= 15  # IFNAMSIZ - 1
    assert len(set(links)) == len(links)
    addresses = [host.address for host in layout.hosts] + [layout.bridge_address]
    assert len(set(addresses)) == MAX_HOSTS + 1
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("10.9.8.0/24") for a in addresses)
    macs = [mac for host in layout.hosts for i in host.interfaces for mac in (i.mac, i.link_mac)]
    macs.append(layout.networks[0].gateway_mac)
    assert len(set(macs)) == len(macs)
    with pytest.raises(ValueError, match="1 to 253 hosts"):
        start_cluster(MAX_HOSTS + 1, Path("/nonexistent"))


def test_max_hosts_start_and_leave_nothing_behind(tmp_path: Path) -> None:
    cluster = start_cluster(MAX_HOSTS, tmp_path)
    hosts = list(cluster.hosts)
    try:
        last = hosts[-1]
        assert last.name == f"h{MAX_HOSTS - 1}"
        result = ssh(cluster, last.name, "hostname; getent hosts h0")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [last.name, hosts[0].address, "h0"]
    finally:
        cluster.close()

    assert all(host.processes() == [] for host in hosts)
    assert not any(cluster.token in link for link in os.listdir("/sys/class/net"))
    assert not any(cluster.token in netns for netns in os.listdir("/run/netns"))
    assert list(tmp_path.iterdir()) == []


def test_two_networks_give_each_host_two_interfaces_with_names_that_differ(tmp_path: Path) -> None:
    with start_cluster(4, tmp_path, networks=2) as cluster:
        h0, h1 = cluster.hosts[:2]
        names = [host.interfaces for host in cluster.hosts]
        assert names == [("eth0", "eth1"), ("ens3", "ens4"), ("enp1s0", "enp2s0"), ("eth0", "eth1")]
        for host in cluster.hosts:
            inside = json.loads(host.run(["ip", "-j", "-4", "addr", "show", "up"]).stdout)
            seen = {entry["ifname"]: [a["local"] for a in entry["addr_info"]] for entry in inside}
            assert seen == {"lo": ["127.0.0.1"]} | {
                n: [a] for n, a in zip(host.interfaces, host.addresses, strict=True)
            }
        subnets = [ipaddress.IPv4Network(f"{a}/24", strict=False) for a in h0.addresses]
        assert subnets[0] != subnets[1]
        assert [ipaddress.IPv4Address(a) in subnets[1] for a in (h1.addresses[1], cluster.gateways[1])] == [True] * 2

        assert connects(h0, h1.addresses[0]) and connects(h0, h1.addresses[1])
        assert accepts_tcp(h1.addresses[0]) and accepts_tcp(h1.addresses[1])
        assert h0.run(["getent", "hosts", "h1"]).stdout.split() == [h1.addresses[0], "h1"]
        assert ssh(cluster, "h1", "hostname").stdout == "h1\n"


def test_an_isolated_first_network_joins_hosts_only_through_the_second(tmp_path: Path) -> None:
    with start_cluster(2, tmp_path, networks=2, isolate_first_network=True) as cluster:
        h0, h1 = cluster.hosts
        with socket.create_server((cluster.gateway, 0)) as launching_side:
            # The launching side still reaches every host on network 1, and they reach it.
            assert ssh(cluster, "h1", "hostname").stdout == "h1\n"
            assert connects(h0, cluster.gateway, launching_side.getsockname()[1])

            assert not connects(h0, h1.addresses[0], timeout=1)
            assert connects(h0, h1.addresses[1])
            assert not connects(h1, h0.addresses[0], timeout=1)
            assert connects(h1, h0.addresses[1])
            # Names resolve to the network the hosts can talk over.
            assert h0.run(["getent", "hosts", "h1"]).stdout.split() == [h1.addresses[1], "h1"]
            assert h1.run(["getent", "hosts", "h1"]).stdout.split() == [h1.addresses[1], "h1"]


def test_block_tcp_in_drops_connections_to_one_port_until_unblocked(pair: Cluster) -> None:
    h0, h1 = pair.hosts
    h0.block_tcp(ALT_SSH_PORT)
    try:
        assert not connects(h1, h0.address, ALT_SSH_PORT, timeout=1)
        assert not accepts_tcp(h0.address, ALT_SSH_PORT)
        assert connects(h1, h0.address, 22)  # other ports stay open
        assert connects(h0, h0.address, ALT_SSH_PORT)  # and the host reaches itself
    finally:
        h0.unblock_all()

    assert connects(h1, h0.address, ALT_SSH_PORT)
    h0.unblock_all()  # nothing left to remove: fine


def test_block_tcp_out_drops_what_the_host_sends_to_a_port(pair: Cluster) -> None:
    h0, h1 = pair.hosts
    h0.block_tcp(22, direction="out")
    try:
        assert not connects(h0, h1.address, 22, timeout=1)
        assert connects(h0, h1.address, ALT_SSH_PORT)
        assert connects(h1, h0.address, 22)  # its replies from port 22 still go out
        assert ssh(pair, "h0", "hostname").stdout == "h0\n"
    finally:
        h0.unblock_all()

    assert connects(h0, h1.address, 22)


def test_block_all_tcp_in_cuts_ssh_too(pair: Cluster) -> None:
    h0, h1 = pair.hosts
    h0.block_tcp()
    h0.block_tcp(12345, direction="out")  # rules add up
    try:
        assert not accepts_tcp(h0.address)
        assert not connects(h1, h0.address, ALT_SSH_PORT, timeout=1)
        assert connects(h1, h1.address, 22)
    finally:
        h0.unblock_all()

    assert ssh(pair, "h0", "hostname").stdout == "h0\n"


def test_hosts_behind_a_bastion_are_reached_only_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with start_cluster(2, tmp_path, bastion=True) as cluster:
        h0, h1 = cluster.hosts
        bastion = cluster.bastion
        assert bastion is not None
        assert [h.name for h in cluster.hosts] == ["h0", "h1"]

        result = ssh(cluster, "h0", "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "h0\n"
        assert ssh(cluster, "bastion", "hostname").stdout == "bastion\n"
        # What the launcher uses: asyncssh, from ~/.ssh/config alone, follows the ProxyJump.
        monkeypatch.setenv("HOME", str(cluster.home))
        assert asyncio.run(asyncssh_hostname("h1")) == "h1\n"

        direct = ssh(cluster, h0.address, "hostname", connect_timeout=2)
        assert direct.returncode == 255
        assert f"connect to host {h0.address} port 22" in direct.stderr  # not a key or login problem
        assert not accepts_tcp(h0.address)
        assert connects(bastion, h0.address) and connects(h1, h0.address)
        assert h0.run(["getent", "hosts", "h1"]).stdout.split() == [h1.address, "h1"]
        assert "ProxyJump bastion" in cluster.ssh_config.read_text().split("Host h0\n")[1].split("Host ")[0]
        # The bastion's sshd keeps the default MaxStartups; the hosts' lift it.
        settings = {
            host.name: bastion.run(["/usr/sbin/sshd", "-T", "-f", str(cluster.workdir / "sshd" / f"{host.name}.conf")])
            for host in (bastion, h0)
        }
        assert "maxstartups 10:30:100" in settings["bastion"].stdout.splitlines(), settings["bastion"].stderr
        assert "maxstartups 200:30:200" in settings["h0"].stdout.splitlines(), settings["h0"].stderr


async def asyncssh_hostname(host: str) -> str:
    async with asyncssh.connect(host) as conn:
        result = await conn.run("hostname", check=True, timeout=20)
        return str(result.stdout)
