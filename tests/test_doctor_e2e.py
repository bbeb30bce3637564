"""``launcher doctor`` on the real test cluster: every host in one table, a firewalled
rendezvous port and an unreachable host flagged while the others are still checked, the
interfaces on two networks, and nothing left behind."""

from __future__ import annotations

import json
import time

import pytest
from cluster import Cluster
from launcher_cli import run_cli

pytestmark = pytest.mark.e2e

PORT = 29556


def test_doctor_flags_the_firewalled_and_the_unreachable_host_and_checks_the_rest(cluster: Cluster) -> None:
    nowhere = "root@192.0.2.1"  # TEST-NET-1, routed onto the cluster's bridge side: it times out
    hosts = cluster.write_hosts_file(["h0", "h1", "h2", nowhere], name="doctor")
    h2 = cluster.hosts[2]
    h2.block_tcp(PORT, direction="out")
    try:
        began = time.monotonic()
        table = run_cli(
            cluster, "doctor", "--hosts", str(hosts), "--rdzv-port", str(PORT), "--connect-timeout", "2", timeout=60
        )
        took = time.monotonic() - began
        as_json = run_cli(cluster, "doctor", "--hosts", str(hosts), "--rdzv-port", str(PORT), "--json",
                          "--connect-timeout", "2", timeout=60)  # fmt: skip
    finally:
        h2.unblock_all()
    assert table.returncode == 1, table.stderr
    assert "Traceback" not in table.stderr
    assert took < 20, took
    lines = table.stdout.splitlines()
    assert all(len(line.rstrip()) <= 80 for line in lines), table.stdout
    notes = " ".join(table.stdout.split())  # a long note wraps
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in ("h0", "h1", "h2")}
    assert rows["h0"][-1] == "ok" and rows["h1"][-1] == "ok", table.stdout
    assert rows["h2"][-2:] == ["blocked", "error"], table.stdout
    assert any(line.startswith(nowhere) and line.endswith("error") for line in (x.rstrip() for x in lines))
    assert f"h2: error: cannot connect to the first host's rendezvous at {cluster.hosts[0].address}:{PORT}" in notes
    assert f"{nowhere}: error: cannot connect" in notes
    assert "warning: clock" not in notes  # the probe's wait does not count as a clock offset
    report = json.loads(as_json.stdout)
    assert not report["ok"] and report["rendezvous"] is None
    levels = {h["host"]: h["level"] for h in report["hosts"]}
    assert levels == {"h0": "ok", "h1": "ok", "h2": "error", nowhere: "error"}
    h1 = report["hosts"][1]
    assert h1["interface"] == cluster.hosts[1].interfaces[0] and h1["report"]["tmux"]
    for host in cluster.hosts:  # nothing left behind: no agent, no listener, no run dir
        assert not [cmd for _, cmd in host.processes() if "launcher.node" in cmd], host.name
        listening = host.run(["ss", "-Htln", f"sport = :{PORT}"]).stdout
        assert not listening.strip(), (host.name, listening)


def test_doctor_passes_on_a_healthy_cluster(cluster: Cluster) -> None:
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="doctor-ok")
    result = run_cli(cluster, "doctor", "--hosts", str(hosts), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["rendezvous"].startswith(f"{cluster.hosts[0].address}:")
    assert [h["interface"] for h in report["hosts"]] == [h.interfaces[0] for h in cluster.hosts]
    assert all(abs(h["clock_offset_s"]) < 1 for h in report["hosts"])
