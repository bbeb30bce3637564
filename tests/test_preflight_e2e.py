"""The launch's network preflight on real hosts: a firewalled rendezvous port fails the
launch in seconds, naming the host; on two networks each host gets its own interface
names in NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME and the job passes over them, also when
the hosts meet only on the second network."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from launcher_cli import assert_one_line_error, job_name, kill_jobs_left_running, leftovers, run_cli, wait_until_ended

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

BLOCKED_PORT = 29555

# Every rank prints the interface variables it got, then all-reduces over gloo: a wrong
# GLOO_SOCKET_IFNAME (an interface this host lacks) fails its init.
IFNAME_SCRIPT = """\
import os, socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
n = dist.get_world_size()
print(f"ifname host={socket.gethostname()} nccl={os.environ.get('NCCL_SOCKET_IFNAME')} "
      f"gloo={os.environ.get('GLOO_SOCKET_IFNAME')} sum={int(t.item())} ok={int(t.item()) == n * (n + 1) // 2}")
dist.destroy_process_group()
"""


def test_a_firewalled_rendezvous_port_fails_the_launch_in_seconds(cluster: Cluster) -> None:
    h2 = cluster.hosts[2]
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="firewalled")
    name = job_name("firewall")
    h2.block_tcp(BLOCKED_PORT, direction="out")
    try:
        began = time.monotonic()
        result = run_cli(
            cluster,
            "launch", "--hosts", str(hosts), "--name", name, "--rdzv-port", str(BLOCKED_PORT),
            "examples/distributed_sum.py",
            timeout=60,
        )  # fmt: skip
        took = time.monotonic() - began
    finally:
        h2.unblock_all()
    assert_one_line_error(result, "h2", f"{cluster.hosts[0].address}:{BLOCKED_PORT}", "timed out")
    assert "h1" not in result.stderr  # h1 reached it
    assert took < 15, took
    for host in cluster.hosts:  # nothing started anywhere
        assert not leftovers(host, (name, "torch.distributed.run", "launcher.node.supervisor")), host.name
        assert not host.exists(Path(cluster.node_state_dir) / "launcher" / "runs" / name)


def test_a_launch_that_follows_a_preflight_reuses_the_port(cluster: Cluster) -> None:
    """The first host held the port while the others probed it; the job listens there next."""
    hosts = cluster.write_hosts_file(["h0", "h1"], name="two")
    name = job_name("reuse")
    result = run_cli(
        cluster, "launch", "--hosts", str(hosts), "--name", name, "--rdzv-port", str(BLOCKED_PORT), "--wait",
        "examples/distributed_sum.py",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f":{BLOCKED_PORT}" in result.stdout


@pytest.fixture(scope="module", params=[False, True], ids=["two-networks", "isolated-first-network"])
def two_networks(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, bool]]:
    """Three hosts on two networks (and whether hosts meet on network 2 only)."""
    with start_cluster(3, tmp_path_factory.mktemp("nets"), networks=2, isolate_first_network=request.param) as c:
        (c.workdir / "ifname.py").write_text(IFNAME_SCRIPT)
        yield c, request.param


def test_each_host_gets_its_own_interface_and_the_job_passes(two_networks: tuple[Cluster, bool]) -> None:
    cluster, isolated = two_networks
    network = 1 if isolated else 0
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="nets")
    name = job_name("ifname")
    launched = run_cli(cluster, "launch", "--hosts", str(hosts), "--name", name, "--cwd", str(cluster.workdir),
                       "ifname.py")  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    # The rendezvous is at the address the hosts reach: network 2 when network 1 is isolated.
    assert f"{cluster.hosts[0].addresses[network]}:" in launched.stdout, launched.stdout
    assert wait_until_ended(cluster, name, timeout=120)["state"] == "succeeded"
    lines = [line for line in run_cli(cluster, "logs", name).stdout.splitlines() if "ifname host=" in line]
    got = {line.split("host=")[1].split()[0]: line for line in lines}
    assert sorted(got) == ["h0", "h1", "h2"], lines
    for host in cluster.hosts:
        interface = host.interfaces[network]
        assert f"nccl={interface} gloo={interface} sum=6 ok=True" in got[host.name], got[host.name]
    assert len({h.interfaces[network] for h in cluster.hosts}) == 3  # the names differ between hosts
    status = run_cli(cluster, "status", name)
    assert cluster.hosts[1].interfaces[network] in status.stdout, status.stdout


def test_a_user_setting_of_the_interface_wins(two_networks: tuple[Cluster, bool]) -> None:
    cluster, _ = two_networks
    hosts = cluster.write_hosts_file(["h0", "h1"], name="user-ifname")
    dry = run_cli(cluster, "launch", "--hosts", str(hosts), "--dry-run", "-e", "GLOO_SOCKET_IFNAME=mine", "x.py")
    assert dry.returncode == 0, dry.stderr
    assert "GLOO_SOCKET_IFNAME=mine" in dry.stdout and "NCCL_SOCKET_IFNAME=IFNAME" in dry.stdout, dry.stdout
    assert "GLOO_SOCKET_IFNAME=IFNAME" not in dry.stdout


def test_doctor_names_each_hosts_interface_on_two_networks(two_networks: tuple[Cluster, bool]) -> None:
    cluster, isolated = two_networks
    network = 1 if isolated else 0
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="doctor-nets")
    result = run_cli(cluster, "doctor", "--hosts", str(hosts), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["rendezvous"].startswith(f"{cluster.hosts[0].addresses[network]}:")
    assert [h["interface"] for h in report["hosts"]] == [h.interfaces[network] for h in cluster.hosts]


def test_nproc_gpu_on_hosts_without_gpus_is_one_line_naming_them(cluster: Cluster) -> None:
    hosts = cluster.write_hosts_file(["h0", "h1"], name="no-gpus")
    result = run_cli(cluster, "launch", "--hosts", str(hosts), "--nproc-per-node", "gpu", "examples/distributed_sum.py")
    assert_one_line_error(result, "nothing was started", "h0: --nproc-per-node gpu, but this host has no GPU")
