"""``launcher doctor --bandwidth`` without a cluster: the job's pairing (pure), its figures
judged (the slow host, a slow link, a host left out), the table and the JSON, and the job
itself as four local processes over gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from launcher.bandwidth_job import _best_per_rank, _bisection, _first_round, _one_at_a_time, _suspects
from launcher.cli.doctor import doctor_json, print_bandwidth
from launcher.doctor.bandwidth import HostBandwidth, evaluate_bandwidth, human_rate
from launcher.doctor.checks import DoctorReport, Finding, HostCheck
from launcher.doctor.passing import Preflight, choose_hosts, hosts_file_text, passed_hosts
from launcher.errors import LauncherError
from launcher.hosts.files import Host, parse_hosts_text
from launcher.protocol.doctor import BANDWIDTH_MARKER, BANDWIDTH_MODULE

GOOD, BAD = 1.0e9, 2.0e6


def _figures(pairs: list[tuple[int, int, float]]) -> dict[str, Any]:
    return {
        "backend": "gloo",
        "latency_s": 0.0015,
        "allreduce": [{"bytes": 4 << 20, "seconds": 0.02, "bus_bandwidth": 3.0e8}],
        "pairs": [{"a": a, "b": b, "bandwidth": bw, "latency_s": 1e-4} for a, b, bw in pairs],
    }


def test_pairs_are_disjoint_and_an_odd_rank_meets_rank_0_alone() -> None:
    assert _first_round(4) == [[(0, 1), (2, 3)]]
    assert _first_round(5) == [[(0, 1), (2, 3)], [(4, 0)]]
    assert _first_round(1) == [[]]


def test_suspects_meet_the_fastest_then_a_new_partner_one_pair_at_a_time() -> None:
    best = [5.0, 5.0, 1.0, 9.0, 1.5, 6.0]
    assert _suspects(best, 0.5) == [2, 4]
    assert _bisection(best, [2, 4]) == [[(2, 3), (4, 5)]]
    done = [{"a": 2, "b": 3, "bandwidth": 1.0}, {"a": 4, "b": 5, "bandwidth": 1.5}]
    assert _one_at_a_time(best, [2, 4], done) == [[(2, 5)], [(4, 3)]]
    pairs = [{"a": 0, "b": 1, "bandwidth": 5.0}, {"a": 2, "b": 3, "bandwidth": 1.0}, {"a": 2, "b": 0, "bandwidth": 1.5}]
    assert _best_per_rank(4, pairs) == [5.0, 5.0, 1.5, 1.0]


def test_a_suspect_that_met_every_host_is_measured_again_with_the_fastest() -> None:
    # Three hosts: h1 met h0 and h2 in the first rounds, once slowed by the pair beside it.
    best = [9e8, 3e8, 8e8]
    done = [{"a": 0, "b": 1}, {"a": 1, "b": 2}, {"a": 0, "b": 2}]
    assert _one_at_a_time(best, [1], done) == [[(1, 0)]]


def test_the_host_slow_in_both_rounds_is_named_and_its_partners_are_not() -> None:
    # Round 1: h2 drags h3 down; round 2 pairs them with the fast ones: h2 stays slow.
    figures = _figures([(0, 1, GOOD), (2, 3, BAD), (2, 0, BAD), (3, 1, GOOD)])
    report = evaluate_bandwidth(["h0", "h1", "h2", "h3"], figures, 0.5)
    assert [h.host for h in report.hosts if h.slow] == ["h2"]
    assert report.passed == ("h0", "h1", "h3") and not report.ok
    assert report.slow_links == () and report.bus_bandwidth == 3.0e8
    assert report.hosts[3].bandwidth == GOOD and report.hosts[2].bandwidth == BAD


def test_a_slow_link_between_two_fast_hosts_is_named_as_a_link() -> None:
    figures = _figures([(0, 1, GOOD), (2, 3, BAD), (2, 0, GOOD), (3, 1, GOOD)])
    report = evaluate_bandwidth(["h0", "h1", "h2", "h3"], figures, 0.5)
    assert not any(h.slow for h in report.hosts)
    assert report.slow_links == (("h2", "h3"),) and not report.ok


def test_healthy_hosts_pass_and_one_host_has_no_pair() -> None:
    report = evaluate_bandwidth(["h0", "h1"], _figures([(0, 1, GOOD)]), 0.5)
    assert report.ok and report.passed == ("h0", "h1")
    alone = evaluate_bandwidth(["h0"], _figures([]), 0.5)
    assert alone.ok and alone.hosts[0].bandwidth is None


def test_the_table_names_the_slow_host_and_the_one_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    figures = _figures([(0, 1, GOOD), (2, 3, BAD), (2, 0, BAD), (3, 1, GOOD)])
    judged = evaluate_bandwidth(["h0", "h1", "h2", "h3"], figures, 0.5)
    left = HostBandwidth("h4", error="not tested: torch: torch is not installed")
    report = replace(judged, hosts=(*judged.hosts, left), seconds=4.2)
    print_bandwidth(report, width=80)
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("h")}
    assert rows["h0"][1:] == ["1.0", "GB/s", "100us", "ok"]
    assert rows["h2"][-1] == "slow" and rows["h4"][-1] == "error"
    assert "all-reduce, 4 hosts, gloo, 4 MiB: bus bandwidth 300 MB/s, latency 1.5ms (4.2s)" in out
    assert "h2: slow: 2.0 MB/s" in out and "h4: error: not tested: torch" in out
    found = doctor_json(DoctorReport((), None), report)
    assert found["bandwidth"]["passed"] == ["h0", "h1", "h3"] and not found["ok"]
    assert [h["level"] for h in found["bandwidth"]["hosts"]] == ["ok", "ok", "error", "ok", "error"]
    json.dumps(found)


def test_rates_read_as_nics_are_rated() -> None:
    assert [human_rate(r) for r in (2.5e9, 3.1e8, 1.25e6, 900.0, None)] == [
        "2.5 GB/s",
        "310 MB/s",
        "1.2 MB/s",
        "900 B/s",
        "-",
    ]


def test_the_job_measures_four_local_processes_over_gloo() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks = []
    for rank in range(4):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank),
               "NNODES": "4", "OMP_NUM_THREADS": "1"}  # fmt: skip
        argv = [sys.executable, "-m", BANDWIDTH_MODULE, "--seconds", "60", "--max-bytes", str(1 << 20)]
        ranks.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0, 0, 0], outputs
    lines = [line for line in outputs[0][0].splitlines() if line.startswith(BANDWIDTH_MARKER)]
    assert len(lines) == 1 and not any(BANDWIDTH_MARKER in out for out, _ in outputs[1:])
    figures = json.loads(lines[0].removeprefix(BANDWIDTH_MARKER))
    assert figures["world"] == 4 and figures["backend"] == "gloo"
    assert figures["allreduce"][0]["bytes"] == 64 << 10
    assert {(p["a"], p["b"]) for p in figures["pairs"]} >= {(0, 1), (2, 3)}
    report = evaluate_bandwidth(["a", "b", "c", "d"], figures, 0.5)
    assert all(h.bandwidth and h.bandwidth > 1e6 for h in report.hosts), report


def _preflight(error_on: str | None = None) -> Preflight:
    figures = _figures([(0, 1, GOOD), (2, 3, BAD), (2, 0, BAD), (3, 1, GOOD)])
    speed = evaluate_bandwidth(["h0", "h1", "h2", "h3"], figures, 0.5)
    checks = [
        HostCheck(h, 0.1, 0.0, None, (Finding("torch", "error", "torch is not installed"),) if h == error_on else ())
        for h in ("h0", "h1", "h2", "h3")
    ]
    if error_on:
        hosts = [HostBandwidth(error_on, error="not tested") if h.host == error_on else h for h in speed.hosts]
        speed = replace(speed, hosts=tuple(hosts))
    return Preflight(DoctorReport(tuple(checks), None), speed)


def test_preflight_refuses_the_slow_host_or_leaves_it_out() -> None:
    hosts = [Host("h0"), Host("h1", slots=2), Host("h2"), Host("h3")]
    with pytest.raises(LauncherError, match=r"preflight: h2: slow: 2.0 MB/s .*\(--exclude-slow leaves them out\)"):
        choose_hosts(hosts, _preflight(), exclude=False)
    assert choose_hosts(hosts, _preflight(), exclude=True) == (hosts[0], hosts[1], hosts[3])
    failed = _preflight(error_on="h1")
    assert failed.failures()[0] == "h1: torch: torch is not installed"
    assert choose_hosts(hosts, failed, exclude=True) == (hosts[0], hosts[3])
    broken = Preflight(failed.checks, replace(failed.speed, error="the test did not finish within 30 s"))
    with pytest.raises(LauncherError, match="the bandwidth test failed: the test did not finish"):
        choose_hosts(hosts, broken, exclude=True)


def test_the_hosts_that_passed_are_written_as_a_hosts_file_that_parses_back() -> None:
    hosts = [Host("h0"), Host("h1", slots=2), Host("h2"), Host("h3")]
    assert passed_hosts(hosts, _preflight().checks, _preflight().speed) == (hosts[0], hosts[1], hosts[3])
    assert passed_hosts(hosts, _preflight().checks, None) == tuple(hosts)
    odd = (Host("h0", user="me", port=2222), Host("fe80::1", port=22), Host("h1", slots=2))
    text = hosts_file_text(odd, now=0)
    assert text.startswith("# the hosts that passed launcher doctor at ")
    assert parse_hosts_text(text, "written") == odd


def test_a_gpu_below_the_median_of_its_model_is_slow_and_its_host_does_not_pass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
    figures = {
        **_figures([(0, 1, GOOD), (2, 0, GOOD)]),
        "gpus": [
            [{"index": 0, "name": h100, "tflops": 650.0}, {"index": 1, "name": h100, "tflops": 640.0}],
            [{"index": 0, "name": h100, "tflops": 655.0}, {"index": 1, "name": h100, "tflops": 300.0}],
            [{"index": 0, "name": a100, "tflops": 250.0}],  # another model: judged among its own
        ],
    }
    report = evaluate_bandwidth(["h0", "h1", "h2"], figures, 0.5)
    assert [(g.host, g.index) for g in report.gpus if g.slow] == [("h1", 1)]
    assert report.passed == ("h0", "h2") and not report.ok
    print_bandwidth(report, width=80)
    out = capsys.readouterr().out
    assert "GPUs: 5, bf16 matmul 250 to 655 TFLOPS" in out
    assert f"h1: slow: GPU 1 ({h100}) 300 TFLOPS, below its peers" in " ".join(out.split())
