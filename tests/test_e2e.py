"""End to end through the real CLI, on real hosts: sshd in network namespaces, real tmux,
real torchrun, real processes (see ``cluster.py``)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cluster import Cluster
from launcher_cli import (
    REPO,
    assert_one_line_error,
    job_name,
    kill_jobs_left_running,
    leftovers,
    run_cli,
    status_of,
    wait_for,
    wait_until_ended,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]


@pytest.fixture
def hosts_file(cluster: Cluster) -> Path:
    return cluster.write_hosts_file(["# the test cluster", "h0", "", "h1  # second", "h2"])


def test_distributed_sum_on_three_hosts_labels_every_rank(cluster: Cluster, hosts_file: Path) -> None:
    name = job_name("sum")
    launched = run_cli(
        cluster,
        "launch",
        "--hosts",
        str(hosts_file),
        "--name",
        name,
        "--nproc-per-node",
        "2",
        "examples/distributed_sum.py",
    )
    assert launched.returncode == 0, launched.stderr
    assert name in launched.stdout and "h0, h1, h2" in launched.stdout

    status = wait_until_ended(cluster, name)
    assert status["state"] == "succeeded", status
    assert [(h["host"], h["state"], h["exit_code"]) for h in status["hosts"]] == [
        (h, "succeeded", 0) for h in ("h0", "h1", "h2")
    ]

    logs = run_cli(cluster, "logs", name)
    assert logs.returncode == 0, logs.stderr
    pattern = re.compile(
        r"^\[(h\d) rank (\d+)\] distributed_sum: host=(h\d) rank=(\d+) local_rank=(\d) world_size=6 device=cpu sum=21 ok$"
    )
    seen = {}
    for line in logs.stdout.splitlines():
        match = pattern.match(line)
        if match:
            label_host, label_rank, host, rank, _ = match.groups()
            assert (label_host, label_rank) == (host, rank), line
            seen[int(rank)] = host
    assert sorted(seen) == list(range(6)), logs.stdout
    assert sorted(seen.values()) == ["h0", "h0", "h1", "h1", "h2", "h2"]

    only_rank_4 = run_cli(cluster, "logs", name, "--rank", "4")
    rank_lines = [line for line in only_rank_4.stdout.splitlines() if "distributed_sum:" in line]
    assert len(rank_lines) == 1 and "rank=4 " in rank_lines[0]

    # --hosts finds the job on the hosts without the local record.
    by_hosts = run_cli(
        cluster, "status", "--json", "--hosts", str(hosts_file), name, XDG_STATE_HOME=str(cluster.workdir / "elsewhere")
    )
    assert json.loads(by_hosts.stdout)["state"] == "succeeded"


def test_kill_leaves_no_process_and_spares_other_jobs(cluster: Cluster, hosts_file: Path) -> None:
    victim, bystander = job_name("victim"), job_name("bystander")
    for name in (victim, bystander):
        launched = run_cli(
            cluster,
            "launch",
            "--hosts",
            str(hosts_file),
            "--name",
            name,
            "--nproc-per-node",
            "2",
            "tests/scripts/sleeper.py",
        )
        assert launched.returncode == 0, launched.stderr

    def all_ranks_ticking(name: str) -> bool:
        out = run_cli(cluster, "logs", name).stdout
        return len(set(re.findall(r"sleeper rank=(\d)", out))) == 6

    for name in (victim, bystander):
        wait_for(f"{name}'s 6 ranks", lambda name=name: all_ranks_ticking(name), timeout=120)
    assert status_of(cluster, victim)["state"] == "running"

    # Ctrl-C on a follower detaches and leaves the job running.
    follower = subprocess.Popen(
        [sys.executable, "-m", "launcher", "logs", "--follow", victim],
        cwd=REPO,
        env=cluster.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    sleeper_line = re.compile(r"^\[h\d rank \d\] sleeper rank=\d tick=\d+$")
    for line in follower.stdout:  # torchrun's own warnings come first, labelled with the host only
        assert re.match(r"^\[h\d( rank \d)?\] ", line), line
        if sleeper_line.match(line):
            break
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=20) == 0
    assert status_of(cluster, victim)["state"] == "running"

    killed = run_cli(cluster, "kill", "--grace", "1", victim)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert len(re.findall(r"^h\d\s+ok\s+killed \d+ process", killed.stdout, re.M)) == 3, killed.stdout

    time.sleep(2)  # anything that survived or respawned would show up by now
    for host in cluster.hosts:
        # The bystander's torchrun and supervisor name their job; nothing else of a job may remain.
        agents = leftovers(host, ("torch.distributed.run", "launcher.node.supervisor"))
        assert len(agents) == 2 and all(bystander in cmd for _, cmd in agents), (host.name, agents)
        # Per host the bystander's 2 ranks and their 2 setsid grandchildren; none of the victim's.
        assert len(leftovers(host, ("-u tests/scripts/sleeper.py", "time.sleep(3600)"))) == 4, (
            host.name,
            host.processes(),
        )

    assert status_of(cluster, victim)["state"] == "killed"
    assert status_of(cluster, bystander)["state"] == "running"

    killed = run_cli(cluster, "kill", "--grace", "1", bystander)
    assert killed.returncode == 0, killed.stdout
    time.sleep(1)
    for host in cluster.hosts:
        assert leftovers(host, ("sleeper.py", "time.sleep(3600)", "torch.distributed.run", "launcher.node")) == []


def test_a_failing_rank_marks_the_job_failed(cluster: Cluster, hosts_file: Path) -> None:
    name = job_name("fail")
    launched = run_cli(
        cluster,
        "launch",
        "--hosts",
        str(hosts_file),
        "--name",
        name,
        "--nproc-per-node",
        "2",
        "-e",
        "FAIL_RANK=3",
        "tests/scripts/fail_rank.py",
    )
    assert launched.returncode == 0, launched.stderr
    status = wait_until_ended(cluster, name)
    assert status["state"] == "failed", status
    # The failing host failed by itself; the teardown stopped the others.
    failed = [h for h in status["hosts"] if h["state"] == "failed" and h["stopped_by"] is None]
    assert len(failed) == 1 and failed[0]["exit_code"] != 0, status
    assert all(h["state"] == "failed" and h["stopped_by"] is not None for h in status["hosts"] if h not in failed)
    assert run_cli(cluster, "status", name).returncode == 1

    logs = run_cli(cluster, "logs", name, "--rank", "3").stdout
    assert re.search(rf"^\[{failed[0]['host']} rank 3\] fail_rank: rank 3 failing on purpose$", logs, re.M), logs


def test_script_args_and_env_arrive_exactly(cluster: Cluster) -> None:
    hosts = cluster.write_hosts_file(["h1"], name="one-host")
    out = cluster.workdir / f"echo-{uuid.uuid4().hex[:6]}.json"
    args = [
        "a b",
        "it's",
        '"quoted"',
        "$HOME",
        "$(touch /tmp/pwned)",
        "`id`",
        "ünïcødé ✓",
        "--flag=x y",
        "",
        "\\",
        "line1\nline2",
        "-e",
        "x;y|z&",
    ]
    env_value = "v=1 'q' \"dq\" $(id) `id` \\ ünï\nsecond line"
    name = job_name("echo")
    launched = run_cli(
        cluster,
        "launch",
        "--hosts",
        str(hosts),
        "--name",
        name,
        "-e",
        f"ECHO_ARGS_OUT={out}",
        "-e",
        f"TRICKY={env_value}",
        "tests/scripts/echo_args.py",
        *args,
    )
    assert launched.returncode == 0, launched.stderr
    assert wait_until_ended(cluster, name)["state"] == "succeeded"
    echoed = json.loads(out.read_text(encoding="utf-8"))
    assert echoed["argv"] == args
    assert echoed["env"]["TRICKY"] == env_value
    assert echoed["env"]["OMP_NUM_THREADS"] == "1"
    assert not Path("/tmp/pwned").exists()


def test_unreachable_host_fails_fast_and_starts_nothing(cluster: Cluster) -> None:
    dead = f"root@{cluster.hosts[2].address}:2223"  # a port nothing listens on
    hosts = cluster.write_hosts_file(["h0", "h1", dead], name="with-dead-host")
    name = job_name("dead")
    started = time.monotonic()
    result = run_cli(cluster, "launch", "--hosts", str(hosts), "--name", name, "tests/scripts/sleeper.py")
    assert time.monotonic() - started < 15
    assert_one_line_error(result, dead, "connection refused")
    for host in cluster.hosts:
        assert leftovers(host, (f"--rdzv-id {name}", f"/{name}/")) == []


def test_a_name_already_running_on_one_host_is_refused_everywhere(cluster: Cluster, hosts_file: Path) -> None:
    name = job_name("taken")
    only_h1 = cluster.write_hosts_file(["h1"], name="only-h1")
    first = run_cli(cluster, "launch", "--hosts", str(only_h1), "--name", name, "tests/scripts/sleeper.py")
    assert first.returncode == 0, first.stderr
    first_job = ("-u tests/scripts/sleeper.py", "time.sleep(3600)")  # its rank and the rank's grandchild
    wait_for("the first job's processes", lambda: len(leftovers(cluster.hosts[1], first_job)) == 2, timeout=60)
    second = run_cli(cluster, "launch", "--hosts", str(hosts_file), "--name", name, "tests/scripts/sleeper.py")
    assert_one_line_error(second, "h1", "already running")
    for host in (cluster.hosts[0], cluster.hosts[2]):
        assert leftovers(host, (f"--rdzv-id {name}", f"/{name}/")) == []
    time.sleep(1)
    assert len(leftovers(cluster.hosts[1], first_job)) == 2, "the refused launch touched the running job"
    assert run_cli(cluster, "kill", "--grace", "0", "--hosts", str(only_h1), name).returncode == 0
    assert leftovers(cluster.hosts[1], ("sleeper.py",)) == []


def test_expected_errors_are_one_line(cluster: Cluster, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-hosts"
    assert_one_line_error(run_cli(cluster, "launch", "--hosts", str(missing), "x.py"), str(missing), "not found")
    bad = tmp_path / "bad-hosts"
    bad.write_text("h0\nh1 slots=two\n")
    assert_one_line_error(run_cli(cluster, "launch", "--hosts", str(bad), "x.py"), f"{bad}:2:")
    assert_one_line_error(run_cli(cluster, "status", "never-launched"), "never-launched")
    assert_one_line_error(run_cli(cluster, "kill", "never-launched"), "never-launched")
    unknown_key = cluster.write_hosts_file(["h0", "h1 color=red"], name="unknown-key")
    assert_one_line_error(run_cli(cluster, "launch", "--hosts", str(unknown_key), "x.py"), f"{unknown_key}:2:")


def test_local_job_without_hosts_file(cluster: Cluster) -> None:
    """The newcomer's first command: no --hosts, runs on this machine, no SSH."""
    result = run_cli(cluster, "launch", "--wait", "--nproc-per-node", "2", "examples/distributed_sum.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "localhost" in result.stdout and "succeeded" in result.stdout
    logs = run_cli(cluster, "logs").stdout  # NAME defaults to the last job launched here
    assert len(re.findall(r"^\[localhost rank [01]\] distributed_sum: .* sum=3 ok$", logs, re.M)) == 2, logs


def test_train_llm_trains_across_two_hosts(cluster: Cluster) -> None:
    name = job_name("llm")
    result = run_cli(
        cluster, "launch", "--hosts", "h0,h2", "--name", name, "--wait", "examples/train_llm.py", "--steps", "20",
        "--log-every", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    logs = run_cli(cluster, "logs", name, "--rank", "0").stdout
    losses = [float(x) for x in re.findall(r"^\[h0 rank 0\] step \d+/20 loss ([0-9.]+)", logs, re.M)]
    assert len(losses) == 3 and losses[-1] < losses[0], logs  # steps 1, 10, 20: it learns
    assert re.search(r"^\[h0 rank 0\] final loss", logs, re.M)
