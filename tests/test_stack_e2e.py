"""``launcher stack`` on the real test cluster: a 3x2 gloo job where rank 4 is stuck in its
own function while the other five wait for it in an all-reduce."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from cluster import Cluster, TestUser
from launcher_cli import REPO, job_name, kill_jobs_left_running, leftovers, run_cli, wait_for, wait_until_ended

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

STUCK = ["--nproc-per-node", "2", "-e", "STUCK_RANK=4", "tests/scripts/stuck_rank.py"]


def _joined(logs: str) -> int:
    return logs.count("stuck_rank: rank ")


def _check_roll_call(call: dict[str, Any], method: str, odd_host: str) -> None:
    assert (call["taken"], call["total"]) == (6, 6), call
    big, odd = call["groups"]
    assert big["where"] == "train_step (stuck_rank.py:21) -> all_reduce (torch/distributed/distributed_c10d.py)"
    assert sorted(p["rank"] for p in big["ranks"]) == [0, 1, 2, 3, 5]
    assert odd["where"].startswith("load_batch_forever (stuck_rank.py:17)"), odd
    (stuck,) = odd["ranks"]
    assert (stuck["rank"], stuck["host"], stuck["method"]) == (4, odd_host, method)
    assert "load_batch_forever" in stuck["text"] and f"taken with {method}" in stuck["text"]


@pytest.mark.parametrize("method", ["auto", "faulthandler"])
def test_stack_names_the_stuck_rank_and_groups_the_others(cluster: Cluster, method: str) -> None:
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="stack")
    name = job_name("stack")
    launched = run_cli(cluster, "launch", "--hosts", str(hosts), "--name", name, *STUCK)
    assert launched.returncode == 0, launched.stderr
    wait_for("every rank joined", lambda: _joined(run_cli(cluster, "logs", name).stdout) == 6)

    taken = run_cli(cluster, "stack", name, "--json", "--method", method)

    assert taken.returncode == 0, taken.stdout + taken.stderr
    _check_roll_call(json.loads(taken.stdout), "py-spy" if method == "auto" else method, "h2")
    text = run_cli(cluster, "stack", name, "--method", method)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == (
        "5 of 6 ranks in train_step (stuck_rank.py:21) -> all_reduce (torch/distributed/distributed_c10d.py)"
    )
    assert lines[1].startswith("rank 4 on h2 elsewhere: load_batch_forever (stuck_rank.py:17)"), lines
    assert any(line.startswith("full stacks of rank 4: h2:") and "/stacks/" in line for line in lines), lines
    assert any(line.startswith("full stacks: ") and line.endswith("on each of h0, h1, h2") for line in lines), lines
    if method == "auto":  # gloo: no rank has NCCL's debug pipe, and that is said per rank
        nccl = run_cli(cluster, "stack", name, "--nccl")
        assert nccl.returncode == 0, nccl.stderr
        assert "NCCL flight recorder" in nccl.stdout and "no flight-recorder dump" in nccl.stdout, nccl.stdout
        assert "no dump: h2: rank 4: no NCCL debug pipe" in nccl.stdout, nccl.stdout
    one = json.loads(run_cli(cluster, "stack", name, "--json", "--rank", "4").stdout)
    assert [p["rank"] for g in one["groups"] for p in g["ranks"]] == [4] and one["unreachable"] == [], one
    killed = run_cli(cluster, "kill", "--grace", "0", name)
    assert killed.returncode == 0, killed.stdout


def test_stack_of_a_job_that_ended_takes_none_and_says_why(cluster: Cluster) -> None:
    name = job_name("stack-ended")
    launched = run_cli(
        cluster, "launch", "--hosts", "h1,", "--name", name, "--wait", "tests/scripts/ticker.py", timeout=120
    )
    assert launched.returncode == 0, launched.stderr
    taken = run_cli(cluster, "stack", name)
    assert taken.returncode == 1
    assert "h1: no stack: the job is not running here (succeeded)" in taken.stdout, taken.stdout


def test_stack_as_a_user_without_root(user_cluster: Cluster) -> None:
    user: TestUser | None = user_cluster.user
    assert user is not None
    name = job_name("stack-user")

    def run_as(*args: str) -> subprocess.CompletedProcess[str]:
        return user.run([sys.executable, "-m", "launcher", *args], cwd=REPO, timeout=120)

    launched = run_as("launch", "--hosts", "h0,h1,h2", "--name", name, *STUCK)
    assert launched.returncode == 0, launched.stderr
    try:
        wait_for("every rank joined", lambda: _joined(run_as("logs", name).stdout) == 6)
        for method in ("auto", "faulthandler"):
            taken = run_as("stack", name, "--json", "--method", method)
            assert taken.returncode == 0, taken.stdout + taken.stderr
            call = json.loads(taken.stdout)
            used = {p["method"] for g in call["groups"] for p in g["ranks"]}
            assert method == "auto" or used == {"faulthandler"}, used
            _check_roll_call(call, used.pop(), "h2")
    finally:
        run_as("kill", "--grace", "0", name)

    hung = job_name("hang-user")
    launched = run_as("launch", "--hosts", "h0,h1,h2", "--name", hung, "--hang-timeout", "30s", *STUCK)
    assert launched.returncode == 0, launched.stderr
    try:
        status = wait_for("the job hung and stopped", lambda: _ended_status(run_as("status", "--json", hung)), 150, 2)
        assert status["state"] == "hung", status
        assert [(p["rank"], p["host"]) for p in status["hang"]["groups"][1]["ranks"]] == [(4, "h2")], status["hang"]
        assert all(str(user.home) in d for _, d in status["hang"]["directories"])
    finally:
        run_as("kill", "--grace", "0", hung)


def _ended_status(result: subprocess.CompletedProcess[str]) -> dict[str, Any] | None:
    status: dict[str, Any] = json.loads(result.stdout)
    return None if any(h["state"] == "running" for h in status["hosts"]) else status


def test_hang_timeout_marks_a_silent_job_hung_with_its_roll_call_and_stops_it(cluster: Cluster) -> None:
    hosts = cluster.write_hosts_file(["h0", "h1", "h2"], name="hang")
    name = job_name("hang")
    launched = run_cli(cluster, "launch", "--hosts", str(hosts), "--name", name, "--hang-timeout", "30s", *STUCK)
    assert launched.returncode == 0, launched.stderr

    status = wait_until_ended(cluster, name, timeout=150)

    assert status["state"] == "hung", status
    hang = status["hang"]
    assert len(hang["groups"]) == 2, (hang, run_cli(cluster, "logs", name).stdout)
    big, odd = hang["groups"]
    assert big["where"] == "train_step (stuck_rank.py:21) -> all_reduce (torch/distributed/distributed_c10d.py)"
    assert [(p["rank"], p["host"]) for p in odd["ranks"]] == [(4, "h2")]
    assert odd["where"].startswith("load_batch_forever (stuck_rank.py:17)")
    assert {host for host, _ in hang["directories"]} == {"h0", "h1", "h2"}
    text = run_cli(cluster, "status", name)
    assert text.returncode == 1
    assert "Hung: no rank printed" in text.stdout and "rank 4 on h2 elsewhere: load_batch_forever" in text.stdout
    assert "/<host>/stacks/hung-" in text.stdout and "on each of h0, h1, h2" in text.stdout, text.stdout
    for host in cluster.hosts:
        assert wait_for(
            f"nothing of {name} on {host.name}",
            lambda h=host: not leftovers(h, (f"--rdzv-id {name}", "stuck_rank.py")),
            timeout=30,
        )
