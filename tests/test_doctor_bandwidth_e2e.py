"""``launcher doctor --bandwidth`` on the real test cluster: four hosts, one of them with its
link throttled (a token bucket, both ways): that host is named slow, no healthy host is, the
others' figures are plausible; a host that cannot join is named with its reason while the
others are still measured; nothing is left running."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from conftest import require_root
from launcher_cli import run_cli

pytestmark = pytest.mark.e2e

SLOW_RATE = "20mbit"  # 2.5 MB/s; gloo over veth between namespaces: hundreds of MB/s


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Hosts h0..h3, for this module."""
    require_root()
    running = start_cluster(4, tmp_path_factory.mktemp("bandwidth-cluster"))
    try:
        yield running
    finally:
        running.close()


def _doctor(cluster: Cluster, hosts: Path, *extra: str) -> dict[str, object]:
    result = run_cli(cluster, "doctor", "--hosts", str(hosts), "--bandwidth", "--json", *extra, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    assert result.returncode == (0 if report["ok"] else 1), result.stderr
    return report


def _left_running(cluster: Cluster) -> list[tuple[str, str]]:
    return [(h.name, cmd) for h in cluster.hosts for _, cmd in h.processes() if "launcher" in cmd]


def test_the_throttled_host_is_named_slow_and_no_healthy_host_is(four: Cluster) -> None:
    hosts = four.write_hosts_file(["h0", "h1", "h2", "h3"], name="bandwidth")
    slow = four.hosts[2]
    slow.throttle(SLOW_RATE)
    try:
        report = _doctor(four, hosts)
        table = run_cli(four, "doctor", "--hosts", str(hosts), "--bandwidth", timeout=120)
    finally:
        slow.unthrottle()
    speed = report["bandwidth"]
    assert isinstance(speed, dict) and speed["error"] is None, speed
    by_host = {h["host"]: h for h in speed["hosts"]}
    assert [h for h, v in by_host.items() if v["slow"]] == ["h2"], speed
    assert speed["passed"] == ["h0", "h1", "h3"] and not report["ok"]
    assert by_host["h2"]["bandwidth"] < 4e6, by_host["h2"]  # 20 mbit: 2.5 MB/s at most
    for name in ("h0", "h1", "h3"):
        assert 2e7 < by_host[name]["bandwidth"] < 1e11, by_host[name]  # 20 MB/s .. 100 GB/s
        assert 0 < by_host[name]["latency_s"] < 0.5, by_host[name]
    assert speed["backend"] == "gloo" and speed["bus_bandwidth"] > 0
    assert table.returncode == 1 and "Traceback" not in table.stderr
    assert "h2: slow:" in table.stdout and "bus bandwidth" in table.stdout, table.stdout
    assert not _left_running(four)


def test_a_host_that_cannot_join_is_named_and_the_others_are_measured(four: Cluster) -> None:
    port = 29557
    blocked = four.hosts[3]
    blocked.block_tcp(port, direction="out")  # it cannot reach the first host's rendezvous
    hosts = four.write_hosts_file(["h0", "h1", "h2", "h3"], name="bandwidth-blocked")
    try:
        report = _doctor(four, hosts, "--rdzv-port", str(port))
    finally:
        blocked.unblock_all()
    speed = report["bandwidth"]
    assert isinstance(speed, dict) and speed["error"] is None, speed
    by_host = {h["host"]: h for h in speed["hosts"]}
    assert by_host["h3"]["error"].startswith("not tested: network: cannot connect"), by_host["h3"]
    assert by_host["h3"]["bandwidth"] is None and speed["passed"] == ["h0", "h1", "h2"]
    assert all(by_host[h]["bandwidth"] > 2e7 and not by_host[h]["slow"] for h in ("h0", "h1", "h2")), speed
    assert not _left_running(four)


def test_a_test_past_its_bound_is_stopped_everywhere_and_reported(four: Cluster) -> None:
    hosts = four.write_hosts_file(["h0", "h1"], name="bandwidth-bound")
    crawling = four.hosts[1]
    crawling.throttle("1mbit")  # a megabyte each way takes longer than the bound
    try:
        report = _doctor(four, hosts, "--bandwidth-seconds", "8")
    finally:
        crawling.unthrottle()
    speed = report["bandwidth"]
    assert isinstance(speed, dict) and not report["ok"], speed
    assert "did not finish within 8 s, stopped on every host" in speed["error"], speed
    assert speed["passed"] == [] and all(h["error"] for h in speed["hosts"]), speed
    assert not _left_running(four)


def test_write_hosts_and_launch_preflight_leave_out_the_slow_host(four: Cluster, tmp_path: Path) -> None:
    hosts = four.write_hosts_file(["h0", "h1 slots=1", "h2", "h3"], name="bandwidth-preflight")
    written = tmp_path / "passed"
    slow = four.hosts[2]
    slow.throttle(SLOW_RATE)
    try:
        doctor = run_cli(four, "doctor", "--hosts", str(hosts), "--bandwidth", "--write-hosts", str(written))
        refused = run_cli(four, "launch", "--hosts", str(hosts), "--preflight", "bandwidth", "--runner", "exec", "true")
        launched = run_cli(four, "launch", "--hosts", str(hosts), "--preflight", "bandwidth", "--exclude-slow",
                           "--runner", "exec", "--wait", "true")  # fmt: skip
    finally:
        slow.unthrottle()
    assert doctor.returncode == 1 and "wrote 3 of 4 hosts" in doctor.stderr, doctor.stderr
    assert [line for line in written.read_text().splitlines() if not line.startswith("#")] == ["h0", "h1 slots=1", "h3"]
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "preflight: h2: slow:" in refused.stderr and "--exclude-slow" in refused.stderr, refused.stderr
    assert "Launched" not in refused.stdout
    assert launched.returncode == 0, launched.stdout + launched.stderr
    assert "preflight: 3 of 4 hosts passed" in launched.stderr, launched.stderr
    assert "on 3 host(s): h0, h1, h3" in launched.stdout, launched.stdout
    assert not _left_running(four)


def test_exclude_slow_without_preflight_is_a_usage_error(four: Cluster) -> None:
    result = run_cli(four, "launch", "--exclude-slow", "--runner", "exec", "true")
    assert result.returncode == 2 and "--exclude-slow needs --preflight bandwidth" in result.stderr, result.stderr
