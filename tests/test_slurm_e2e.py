"""launcher under a real SLURM: ``--hosts slurm`` inside ``salloc``, and ``launcher sbatch --submit``.

All on the session's one ``slurm`` fixture (3 hosts, 2 CPUs each in slurm.conf when the
machine has 2). The nodes are the cluster's sshd hosts, reached with its ssh config.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher_cli import REPO, SCRIPTS, assert_one_line_error, job_name, leftovers, wait_for
from slurm_cluster import SlurmCluster
from slurm_fixtures import slurm  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

HOSTS = ["h0", "h1", "h2"]
SUM_LINE = re.compile(r"^\[(h\d) rank (\d+)\] distributed_sum: host=(h\d) rank=\d+ .* world_size=(\d+) .* ok$")


@pytest.fixture(autouse=True)
def no_jobs_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test leaves (it failed half-way) is cancelled, and its processes killed."""
    if "slurm" not in request.fixturenames:
        yield
        return
    slurm: SlurmCluster = request.getfixturevalue("slurm")  # noqa: F811
    state_dirs = [Path(slurm.env()["XDG_STATE_HOME"]), slurm.cluster.node_state_dir]
    before = {path for state in state_dirs for path in (state / "launcher" / "jobs").glob("*.json")}
    yield
    slurm.cancel_all_jobs()
    for state in state_dirs:
        for record in set((state / "launcher" / "jobs").glob("*.json")) - before:
            if json.loads(record.read_text()).get("last_state") not in ("succeeded", "killed"):
                cli(slurm, "kill", "--grace", "0", record.stem, XDG_STATE_HOME=str(state))


def cli(slurm: SlurmCluster, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=REPO,
        env=slurm.env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sbatch_cli(slurm: SlurmCluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    """launcher as a user of ``launcher sbatch`` runs it: its records and the nodes' run dirs
    under one state dir (SLURM's tasks inherit the submitter's XDG_STATE_HOME; on the test
    cluster SSH sessions get the nodes' one)."""
    return cli(slurm, *args, **{"XDG_STATE_HOME": str(slurm.cluster.node_state_dir), **env})


def in_allocation(
    slurm: SlurmCluster,  # noqa: F811
    script: str,
    nodes: int = 3,
    *options: str,
) -> subprocess.CompletedProcess[str]:
    """``salloc -N nodes sh -c SCRIPT`` from the repo, ``$launcher`` being this launcher."""
    return subprocess.run(
        ["salloc", f"--nodes={nodes}", *options, "sh", "-c", script],
        cwd=REPO,
        env=slurm.env(launcher=f"{shlex.quote(sys.executable)} -m launcher"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def sum_ranks(logs: str) -> dict[int, str]:
    """Global rank -> host, from distributed_sum's ``ok`` lines (label and line must agree)."""
    seen = {}
    for line in logs.splitlines():
        match = SUM_LINE.match(line)
        if match:
            label, rank, host, _ = match.groups()
            assert label == host, line
            seen[int(rank)] = host
    return seen


def slurm_job_of(name: str, state_dir: Path) -> str:
    record = json.loads((state_dir / "launcher" / "jobs" / f"{name}.json").read_text())
    job_id: str = record["slurm_job_id"]
    return job_id


# --- inside an allocation --------------------------------------------------------------


def test_distributed_sum_with_hosts_slurm_inside_salloc(slurm: SlurmCluster) -> None:  # noqa: F811
    name = job_name("alloc-sum")
    per_node = min(2, slurm.cpus_per_node)
    # No tasks per node asked for: the CPUs SLURM gives each node are its slots.
    launched = in_allocation(
        slurm,
        f"$launcher launch --hosts slurm --name {name} --wait examples/distributed_sum.py",
        2,
        f"--cpus-per-task={per_node}",
    )

    assert launched.returncode == 0, launched.stdout + launched.stderr
    hosts = re.search(rf"Launched {name} on 2 host\(s\): (h\d), (h\d)\n", launched.stdout)
    assert hosts is not None, launched.stdout
    logs = cli(slurm, "logs", name)
    assert logs.returncode == 0, logs.stderr
    ranks = sum_ranks(logs.stdout)
    assert sorted(ranks) == list(range(2 * per_node)), logs.stdout
    assert sorted(ranks.values()) == sorted(hosts.groups() * per_node)
    status = json.loads(cli(slurm, "status", "--json", name).stdout)
    assert [(h["host"], h["state"]) for h in status["hosts"]] == [(h, "succeeded") for h in hosts.groups()]


def test_kill_inside_salloc_leaves_nothing(slurm: SlurmCluster) -> None:  # noqa: F811
    name = job_name("alloc-kill")
    sleeper = SCRIPTS.relative_to(REPO) / "sleeper.py"
    wait_running = f"until $launcher status {name} | grep -q running; do sleep 0.3; done"
    script = (
        f"$launcher launch --hosts slurm --nproc-per-node 1 --name {name} {sleeper} && {wait_running} && "
        f"$launcher kill --grace 1 {name}"
    )

    result = in_allocation(slurm, script, nodes=2)

    assert result.returncode == 0, result.stdout + result.stderr
    kills = [line.split() for line in result.stdout.splitlines() if re.match(r"^h\d ", line)]
    assert len(kills) == 2 and all(words[1] == "ok" for words in kills), result.stdout
    hosts = {h.name: h for h in slurm.cluster.hosts}
    assert all(not leftovers(hosts[words[0]], ("sleeper.py", "time.sleep(3600)")) for words in kills)


def test_hosts_slurm_outside_an_allocation_is_one_line() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "launch", "--hosts", "slurm", "examples/distributed_sum.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert_one_line_error(result, "--hosts slurm", "not inside a SLURM allocation")
    assert result.returncode == 2


# --- launcher sbatch --submit ----------------------------------------------------------


def test_sbatch_submit_runs_distributed_sum(slurm: SlurmCluster) -> None:  # noqa: F811
    name = job_name("sbatch-sum")
    output = slurm.jobs_dir / f"{name}.out"
    submitted = sbatch_cli(
        slurm,
        "sbatch",
        "--submit",
        "--wait",
        "--nodes=2",
        "--nproc-per-node=2",
        f"--cpus-per-task={min(2, slurm.cpus_per_node)}",  # sbatch's and srun's
        "--name",
        name,
        f"--sbatch-arg=--output={output}",
        "examples/distributed_sum.py",
    )
    assert submitted.returncode == 0, submitted.stderr
    started = re.search(rf"Started {name} \(SLURM job \d+\) on 2 node\(s\): (h\d), (h\d)\n", submitted.stdout)
    assert started is not None, submitted.stdout
    nodes = list(started.groups())
    assert f"{name}: succeeded" in submitted.stdout  # --wait: its status at the end

    ended = slurm.wait_for_job_end(slurm_job_of(name, slurm.cluster.node_state_dir), timeout=120)

    assert (ended["JobState"], ended["ExitCode"]) == ("COMPLETED", "0:0"), (ended, output.read_text())
    status = json.loads(sbatch_cli(slurm, "status", "--json", name).stdout)
    assert [(h["host"], h["state"], h["exit_code"]) for h in status["hosts"]] == [(h, "succeeded", 0) for h in nodes]
    ranks = sum_ranks(sbatch_cli(slurm, "logs", name).stdout)
    assert sorted(ranks) == list(range(4)) and sorted(ranks.values()) == sorted(nodes * 2)


def test_sbatch_kill_goes_through_scancel_and_verifies(slurm: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    name = job_name("sbatch-kill")
    sleeper = str(SCRIPTS.relative_to(REPO) / "sleeper.py")
    output = f"--sbatch-arg=--output={slurm.jobs_dir / name}.out"
    submitted = sbatch_cli(slurm, "sbatch", "--submit", "-N", "2", "--name", name, output, sleeper)
    assert submitted.returncode == 0, submitted.stderr
    job = slurm_job_of(name, slurm.cluster.node_state_dir)
    hosts = [h for h in slurm.cluster.hosts if h.name in submitted.stdout.rsplit(":", 1)[1]]
    wait_for(f"{name} running", lambda: all(leftovers(h, ("sleeper.py",)) for h in hosts), timeout=60)

    refusing = tmp_path / "bin"
    refusing.mkdir()
    (refusing / "scancel").write_text("#!/bin/sh\necho 'scancel: error: Access/permission denied' >&2\nexit 1\n")
    (refusing / "scancel").chmod(0o755)
    path = f"{refusing}:{slurm.env()['PATH']}"
    refused = sbatch_cli(slurm, "kill", "--grace", "1", name, PATH=path)
    assert_one_line_error(refused, f"scancel refused SLURM job {job}", "Access/permission denied")
    assert slurm.job_info(job)["JobState"] == "RUNNING"

    killed = sbatch_cli(slurm, "kill", "--grace", "1", name)

    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert slurm.job_info(job)["JobState"] == "CANCELLED"
    assert killed.stdout.count(f"ok    ended by scancel (SLURM job {job}); none left") == 2, killed.stdout
    assert json.loads(sbatch_cli(slurm, "status", "--json", name).stdout)["state"] == "killed"
    assert all(not leftovers(h, ("sleeper.py", "time.sleep(3600)", "slurm_task")) for h in hosts)


def test_sbatch_submit_of_a_job_that_stays_pending_cancels_it(slurm: SlurmCluster) -> None:  # noqa: F811
    blocker = slurm.run(["sbatch", "--parsable", "--nodes=3", "--exclusive", "--wrap=sleep 600"])
    assert blocker.returncode == 0, blocker.stderr
    name = job_name("pending")

    result = sbatch_cli(slurm, "sbatch", "--submit", "-N", "3", "--start-timeout", "1", "--name", name, "x.py")

    assert_one_line_error(result, "still PENDING after 1 s", "cancelled it")
    assert slurm.job_ids() == [blocker.stdout.strip()]
    assert not (slurm.cluster.node_state_dir / "launcher" / "jobs" / f"{name}.json").exists()


def test_sbatch_submit_of_a_job_whose_tasks_cannot_start(slurm: SlurmCluster) -> None:  # noqa: F811
    name = job_name("no-python")
    output = f"--sbatch-arg=--output={slurm.jobs_dir / name}.out"
    args = ["--python", "/nonexistent/python3", "--rdzv-port", "29400", "--name", name, output]

    result = sbatch_cli(slurm, "sbatch", "--submit", "-N", "2", *args, "examples/distributed_sum.py")

    assert_one_line_error(result)
    assert re.search(r"SLURM job \d+ (failed to start: FAILED|ended \(FAILED\) before its task started)", result.stderr)
    assert slurm.job_ids() == []
    assert not (slurm.cluster.node_state_dir / "launcher" / "jobs" / f"{name}.json").exists()


def test_sbatch_refused_by_slurm_is_one_line(slurm: SlurmCluster) -> None:  # noqa: F811
    result = sbatch_cli(slurm, "sbatch", "--submit", "--sbatch-arg=--nodelist=nosuchnode", "x.py")

    assert_one_line_error(result, "sbatch refused the job")
    assert slurm.job_ids() == []
