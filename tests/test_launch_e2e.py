"""Launch in depth, on the real test cluster: hostfile forms, environment, --python and
--cwd checks, --force, --dry-run, --wait/--follow."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from cluster import ALT_SSH_PORT, Cluster
from launcher_cli import (
    REPO,
    SCRIPTS,
    assert_one_line_error,
    job_name,
    kill_jobs_left_running,
    leftovers,
    run_cli,
    wait_for,
    wait_until_ended,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]


def test_every_hostfile_form_in_one_job(cluster: Cluster) -> None:
    h1 = cluster.hosts[1]
    hosts = cluster.write_hosts_file(
        [
            "# DeepSpeed, horovod and ssh forms side by side",
            "h0 slots=2          # an ssh-config alias with slots",
            f"root@{h1.address}:{ALT_SSH_PORT}   # user, IP address and a non-default port",
            "",
            "h2:1",
        ],
        name="mixed-forms",
    )
    name = job_name("forms")
    launched = run_cli(cluster, "launch", "--hosts", str(hosts), "--name", name, "examples/distributed_sum.py")
    assert launched.returncode == 0, launched.stderr
    assert wait_until_ended(cluster, name)["state"] == "succeeded"
    logs = run_cli(cluster, "logs", name).stdout
    ok = re.findall(
        r"^\[(\S+) rank (\d)\] distributed_sum: host=(h\d) .* world_size=4 device=cpu sum=10 ok$", logs, re.M
    )
    assert sorted(int(rank) for _, rank, _ in ok) == [0, 1, 2, 3], logs
    by_label = {}
    for label, _, host in ok:
        by_label.setdefault(label, []).append(host)
    assert by_label == {"h0": ["h0", "h0"], f"root@{h1.address}:{ALT_SSH_PORT}": ["h1"], "h2": ["h2"]}


def test_inline_hosts(cluster: Cluster) -> None:
    name = job_name("inline")
    launched = run_cli(cluster, "launch", "--hosts", "h1,h2:2", "--name", name, "--wait", "examples/distributed_sum.py")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    logs = run_cli(cluster, "logs", "--hosts", "h1,h2:2", name).stdout
    assert len(re.findall(r"world_size=3 device=cpu sum=6 ok$", logs, re.M)) == 3, logs


def test_python_missing_on_one_host_fails_before_starting_anything(cluster: Cluster) -> None:
    # /tmp is private to each host: this interpreter path exists on h1 only.
    only_on_h1 = f"/tmp/python-{uuid.uuid4().hex[:6]}"
    assert cluster.hosts[1].run(["ln", "-s", sys.executable, only_on_h1]).returncode == 0
    hosts = cluster.write_hosts_file(["h1", "h0"], name="h1-first")
    name = job_name("nopython")
    result = run_cli(
        cluster, "launch", "--hosts", str(hosts), "--name", name, "--python", only_on_h1, "tests/scripts/sleeper.py"
    )
    assert_one_line_error(result, "h0: python not found there", only_on_h1)
    assert "h1:" not in result.stderr
    for host in cluster.hosts:
        assert leftovers(host, (f"--rdzv-id {name}", f"/{name}/")) == []


# A node with another launcher version installed: test_node_travels_e2e.py (this version's node side wins).


def test_script_missing_on_one_host_fails_before_starting_anything(cluster: Cluster) -> None:
    # The same directory on both hosts, in their private /tmp; the script is copied to h1 only.
    workdir = f"/tmp/unsynced-{uuid.uuid4().hex[:6]}"
    for host in cluster.hosts[:2]:
        assert host.run(["mkdir", workdir]).returncode == 0
    assert cluster.hosts[1].run(["cp", str(SCRIPTS / "sleeper.py"), workdir]).returncode == 0
    name = job_name("noscript")
    result = run_cli(cluster, "launch", "--hosts", "h1,h0", "--name", name, "--cwd", workdir, "sleeper.py")
    assert_one_line_error(result, f"h0: script sleeper.py not found in {workdir}")
    assert "h1:" not in result.stderr
    for host in cluster.hosts:
        assert leftovers(host, (f"/{name}/",)) == []


def test_a_command_that_cannot_start_fails_the_launch(cluster: Cluster) -> None:
    name = job_name("nocmd")
    result = run_cli(cluster, "launch", "--hosts", "h0,h1", "--name", name, "--runner", "exec", "--", "no-such-cmd-x")
    assert_one_line_error(result, "launch failed")
    # Each host that failed before the first failure cancelled the others is named.
    named = re.findall(r"\b(h\d): cannot start no-such-cmd-x: No such file or directory\b", result.stderr)
    assert named and set(named) <= {"h0", "h1"}, result.stderr
    for host in cluster.hosts:
        assert leftovers(host, (f"/{name}/",)) == []
    assert "no job" in run_cli(cluster, "status", name).stderr


def test_missing_working_directory_is_named(cluster: Cluster) -> None:
    result = run_cli(cluster, "launch", "--hosts", "h0,", "--cwd", "/no/such/dir", "x.py")
    assert_one_line_error(result, "h0", "working directory /no/such/dir does not exist")


def test_environment_reaches_every_rank_exactly(cluster: Cluster) -> None:
    workdir = cluster.workdir / f"envtest-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    out = workdir / "echo.json"
    (workdir / ".launcher_env").write_text(
        "# picked up from the working directory\nFROM_DOTFILE=dot\nOVERRIDDEN=dotfile\n"
    )
    env_file = workdir / "extra.env"
    env_file.write_text("export FROM_ENV_FILE=file value with spaces\nOVERRIDDEN=env-file\n")
    name = job_name("env")
    launched = run_cli(
        cluster,
        "launch",
        "--hosts",
        "h2,",
        "--name",
        name,
        "--cwd",
        str(workdir),
        "--env-file",
        str(env_file),
        "-e",
        f"ECHO_ARGS_OUT={out}",
        "-e",
        "OVERRIDDEN=dash-e",
        "--wait",
        str(SCRIPTS / "echo_args.py"),
        NCCL_DEBUG="INFO",
        HF_HOME="/data/hf cache",
        UNRELATED_VARIABLE="stays home",
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr
    env = json.loads(out.read_text())["env"]
    assert env["NCCL_DEBUG"] == "INFO" and env["HF_HOME"] == "/data/hf cache"
    assert "UNRELATED_VARIABLE" not in env
    assert (env["FROM_DOTFILE"], env["FROM_ENV_FILE"], env["OVERRIDDEN"]) == ("dot", "file value with spaces", "dash-e")
    # torchrun gives every worker its own error file under the node's log dir.
    assert f"/runs/{name}/h2/torchrun/" in env["TORCHELASTIC_ERROR_FILE"]


def test_dry_run_prints_each_hosts_command_and_touches_no_host(cluster: Cluster) -> None:
    nowhere = "root@192.0.2.1"  # TEST-NET-1: never contacted, a dry run must not try
    hosts = cluster.write_hosts_file(["h0 slots=2", nowhere], name="dry")
    name = job_name("dry")
    started = time.monotonic()
    result = run_cli(
        cluster, "launch", "--hosts", str(hosts), "--name", name, "--dry-run", "-e", "WANDB_API_KEY=s3cret",
        "examples/train_llm.py", "--steps", "$(id)",
    )  # fmt: skip
    assert time.monotonic() - started < 5
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout and "WANDB_API_KEY=****" in result.stdout
    commands = [line for line in result.stdout.splitlines() if line.startswith("env ")]
    assert len(commands) == 2
    assert "--nproc-per-node 2" in commands[0] and "--rdzv-conf is_host=1" in commands[0]
    assert "--nproc-per-node GPUS" in commands[1] and "--rdzv-conf is_host=0" in commands[1]
    assert all("--rdzv-endpoint h0:PORT" in c and c.endswith("examples/train_llm.py --steps '$(id)'") for c in commands)
    assert not (cluster.node_state_dir / "launcher" / "runs" / name).exists()


def test_force_replaces_a_running_job(cluster: Cluster) -> None:
    name = job_name("force")
    h1 = cluster.hosts[1]
    assert run_cli(cluster, "launch", "--hosts", "h1,", "--name", name, "tests/scripts/sleeper.py").returncode == 0
    rank = ("-u tests/scripts/sleeper.py",)
    first = wait_for("the first rank", lambda: leftovers(h1, rank), timeout=60)
    refused = run_cli(cluster, "launch", "--hosts", "h1,", "--name", name, "tests/scripts/sleeper.py")
    assert_one_line_error(refused, "already running", "--force")
    replaced = run_cli(cluster, "launch", "--hosts", "h1,", "--name", name, "--force", "tests/scripts/sleeper.py")
    assert replaced.returncode == 0, replaced.stderr
    second = wait_for("the new rank", lambda: leftovers(h1, rank), timeout=60)
    assert {pid for pid, _ in first}.isdisjoint(pid for pid, _ in second)
    assert len(second) == 1


def test_wait_exits_non_zero_when_a_rank_fails(cluster: Cluster) -> None:
    result = run_cli(
        cluster,
        "launch",
        "--hosts",
        "h0,",
        "--nproc-per-node",
        "2",
        "-e",
        "FAIL_RANK=1",
        "--wait",
        "tests/scripts/fail_rank.py",
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout


def test_follow_streams_until_the_job_ends(cluster: Cluster) -> None:
    result = run_cli(cluster, "launch", "--hosts", "h0,h2", "--follow", "examples/distributed_sum.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"^\[h[02] rank [01]\] distributed_sum: .* sum=3 ok$", result.stdout, re.M)) == 2
    assert "succeeded" in result.stdout


def test_ctrl_c_during_wait_leaves_the_job_running_and_no_agent_behind(cluster: Cluster) -> None:
    name = job_name("waitc")
    waiting = subprocess.Popen(
        [sys.executable, "-m", "launcher", "launch", "--hosts", "h0,h1", "--name", name, "--runner", "python",
         "--wait", "tests/scripts/sleeper.py"],
        cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    agents = ("launcher.node serve",)

    def running() -> bool:
        return json.loads(run_cli(cluster, "status", "--json", name).stdout or "{}").get("state") == "running"

    try:
        wait_for("the job to run", running, timeout=60)
        time.sleep(2)  # the launch's own agents are gone by now
        # --wait holds one quiet connection per host, each answered by the node when the job ends.
        assert all(leftovers(h, agents) for h in cluster.hosts[:2])
        waiting.send_signal(signal.SIGINT)
        _, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 130, err
    assert "Traceback" not in err and f"stopped waiting; {name} keeps running" in err, err
    # The nodes notice the closed connection and their agents end; the job does not.
    wait_for("the agents to end", lambda: not any(leftovers(h, agents) for h in cluster.hosts[:2]), timeout=10)
    assert running()


def test_repo_is_shared_with_the_hosts() -> None:
    """The e2e tests rely on it: the repo (scripts, examples) lies outside the hosts' private /tmp."""
    assert not str(REPO).startswith("/tmp/")


def test_ctrl_c_during_launch_leaves_nothing_behind(cluster: Cluster) -> None:
    h2 = cluster.hosts[2]
    name = job_name("ctrlc")
    h2.set_link(False)  # h2 does not answer: the launch waits on it with h0 and h1 prepared
    try:
        launch = subprocess.Popen(
            [sys.executable, "-m", "launcher", "launch", "--hosts", "h0,h1,h2", "--name", name,
             "--connect-timeout", "60", "tests/scripts/sleeper.py"],
            cwd=REPO, env=cluster.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(3)
        launch.send_signal(signal.SIGINT)
        _, err = launch.communicate(timeout=30)
    finally:
        h2.set_link(True)
    assert launch.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == ["Interrupted."], err
    for host in cluster.hosts:
        assert leftovers(host, (f"--rdzv-id {name}", f"/{name}/")) == []
    assert "no job" in run_cli(cluster, "status", name).stderr  # and no record of a job that never was
