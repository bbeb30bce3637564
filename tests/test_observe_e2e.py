"""Observability and teardown on the real test cluster: root cause, one failure tears down
all, follow across a network cut, kill with a crashed host, kill --all, logs filters."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from cluster import Cluster
from launcher_cli import (
    REPO,
    job_name,
    kill_jobs_left_running,
    leftovers,
    run_cli,
    status_of,
    wait_for,
    wait_until_ended,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]


def test_one_failure_tears_down_all_and_names_the_first_failure(cluster: Cluster) -> None:
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="teardown")
    name = job_name("teardown")
    launched = run_cli(
        cluster, "launch", "--hosts", str(hosts), "--name", name, "--nproc-per-node", "2", "-e", "FAIL_RANK=3",
        "tests/scripts/collective_hang.py",
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    # Without the teardown the other five ranks would wait in the all-reduce for 30 minutes.
    status = wait_until_ended(cluster, name, timeout=120)
    assert status["state"] == "failed", status
    cause = status["root_cause"]
    assert cause["rank"] == 3 and cause["exit_code"] == 1, cause
    assert cause["exception"] == "ValueError: rank 3 hit a bad batch"
    assert any('raise ValueError(f"rank {rank} hit a bad batch")' in line for line in cause["traceback"])
    failed_host = cause["host"]
    stopped = [h for h in status["hosts"] if h["host"] != failed_host]
    assert all(h["state"] == "failed" and h["stopped_by"] is not None for h in stopped), status
    failing = next(h for h in status["hosts"] if h["host"] == failed_host)
    assert {"rank": 3, "state": "failed", "exit_code": 1, "signal": None} in failing["ranks"]

    for host in cluster.hosts:
        assert wait_for(
            f"nothing of {name} on {host.name}",
            lambda h=host: not leftovers(h, (f"--rdzv-id {name}", "collective_hang.py")),
            timeout=30,
        )

    text = run_cli(cluster, "status", name)
    assert text.returncode == 1
    assert f"First failure: {failed_host}, rank 3 (exit code 1): ValueError: rank 3 hit a bad batch" in " ".join(
        text.stdout.split()
    )


def test_a_rank_killed_by_a_signal_is_named_as_such(cluster: Cluster) -> None:
    name = job_name("sigkill")
    result = run_cli(
        cluster,
        "launch",
        "--hosts",
        "h1,",
        "--name",
        name,
        "--nproc-per-node",
        "2",
        "--wait",
        "tests/scripts/self_kill.py",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    cause = status_of(cluster, name)["root_cause"]
    assert (cause["host"], cause["rank"], cause["signal"]) == ("h1", 1, "SIGKILL"), cause
    assert cause["exception"].startswith("killed by SIGKILL")


def test_follow_survives_a_network_cut_without_losing_or_repeating_a_line(cluster: Cluster) -> None:
    h1 = cluster.hosts[1]
    name = job_name("cut")
    ticks = 150
    launched = run_cli(
        cluster, "launch", "--hosts", "h1,", "--name", name, "-e", f"TICKS={ticks}", "tests/scripts/ticker.py"
    )
    assert launched.returncode == 0, launched.stderr
    follower = subprocess.Popen(
        [sys.executable, "-m", "launcher", "logs", "--follow", "--keepalive", "1", name],
        cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follower.stdout is not None
    lines = []
    try:
        for line in follower.stdout:
            lines.append(line)
            if "tick=20" in line:
                break
        h1.set_link(False)
        time.sleep(6)
        h1.set_link(True)
        out, err = follower.communicate(timeout=120)
    finally:
        h1.set_link(True)
        follower.kill()
    lines.extend(out.splitlines(keepends=True))
    seen = [int(m.group(1)) for line in lines if (m := re.match(r"^\[h1 rank 0\] ticker tick=(\d+)$", line))]
    assert seen == list(range(ticks)), seen
    assert follower.returncode == 0
    assert "h1:" in err and "reconnected" in err, err


def test_kill_reports_a_crashed_host_and_cleans_the_others(cluster: Cluster) -> None:
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="crash")
    name = job_name("crash")
    assert run_cli(cluster, "launch", "--hosts", str(hosts), "--name", name, "tests/scripts/sleeper.py").returncode == 0
    rank = ("-u tests/scripts/sleeper.py",)
    for host in cluster.hosts:
        wait_for(f"the rank on {host.name}", lambda h=host: leftovers(h, rank), timeout=60)
    h2 = cluster.hosts[2]
    h2.set_link(False)  # "crashed": nothing answers any more
    try:
        killed = run_cli(cluster, "kill", "--grace", "1", "--connect-timeout", "5", name)
    finally:
        h2.set_link(True)
    assert killed.returncode == 1, killed.stdout
    assert re.search(r"^h0\s+ok\s+killed", killed.stdout, re.M) and re.search(r"^h1\s+ok\s+killed", killed.stdout, re.M)
    assert re.search(r"^h2\s+FAIL\s+cannot connect", killed.stdout, re.M), killed.stdout
    for host in cluster.hosts[:2]:
        assert leftovers(host, (f"--rdzv-id {name}", "sleeper.py")) == []
    assert leftovers(h2, rank), "the crashed host's job is still there"
    again = run_cli(cluster, "kill", "--grace", "1", name)
    assert again.returncode == 0, again.stdout
    assert re.search(r"^h0\s+ok\s+already gone", again.stdout, re.M)
    assert leftovers(h2, (f"--rdzv-id {name}", "sleeper.py")) == []


def test_kill_all_ends_every_job_on_the_hosts(cluster: Cluster) -> None:
    names = [job_name("all"), job_name("all")]
    for name in names:
        assert run_cli(cluster, "launch", "--hosts", "h2,", "--name", name, "tests/scripts/sleeper.py").returncode == 0
    h2 = cluster.hosts[2]
    wait_for("both ranks", lambda: len(leftovers(h2, ("-u tests/scripts/sleeper.py",))) == 2, timeout=60)
    killed = run_cli(cluster, "kill", "--all", "--grace", "1", "--hosts", "h2,")
    assert killed.returncode == 0, killed.stdout
    assert all(name in killed.stdout for name in names)
    assert leftovers(h2, ("sleeper.py", "time.sleep(3600)")) == []


def test_logs_filters(cluster: Cluster) -> None:
    name = job_name("filters")
    result = run_cli(
        cluster,
        "launch",
        "--hosts",
        "h0,h1",
        "--name",
        name,
        "-e",
        "TICKS=5",
        "-e",
        "TICK_EVERY=0",
        "--wait",
        "tests/scripts/ticker.py",
    )
    assert result.returncode == 0, result.stdout + result.stderr

    def logs(*args: str) -> list[str]:
        out = run_cli(cluster, "logs", name, *args)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    only_h1 = logs("--host", "h1")
    assert only_h1 and all(line.startswith("[h1") for line in only_h1)

    def by_rank(lines: list[str]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for line in lines:
            label, _, text = line.partition("] ")
            if "rank" in label:
                grouped.setdefault(label, []).append(text)
        return grouped

    # stdout and stderr are tailed apart by torchrun, so only each stream's own order is
    # fixed: --tail must equal the last lines of the full output, whatever they are.
    full, tailed = by_rank(logs()), by_rank(logs("--tail", "2"))
    assert sorted(tailed) == ["[h0 rank 0", "[h1 rank 1"], tailed
    assert all(tailed[rank] == full[rank][-2:] for rank in tailed), (tailed, full)
    # Following with --tail starts from the same lines (and ends at once: the job has ended).
    assert by_rank(logs("--follow", "--tail", "2")) == tailed
    assert all(len(full[rank]) == 6 for rank in full), full  # 5 ticks and "ticker done"
    assert [line.split("] ", 1)[1] for line in logs("--stderr") if "rank" in line] == ["ticker done", "ticker done"]
    bare = logs("--no-prefix", "--rank", "0")
    assert "ticker tick=0" in bare and not any(line.startswith("[") for line in bare)
