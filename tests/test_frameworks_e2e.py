"""accelerate and DeepSpeed scripts, unchanged: on 2 hosts x 2 processes under ``launcher launch``
over SSH, and on 2 nodes x 1 process under ``launcher sbatch --submit`` on the test SLURM.

Each script checks itself (an all-reduce, and weights equal on every rank after training) and
prints one ``... ok`` line per rank; the tests read those lines back with ``launcher logs``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from launcher_cli import job_name, kill_jobs_left_running, run_cli
from slurm_cluster import SlurmCluster
from slurm_fixtures import slurm  # noqa: F401
from test_slurm_e2e import sbatch_cli, slurm_job_of

pytestmark = [pytest.mark.e2e]

ACCELERATE_ENV = "ACCELERATE_USE_CPU=true"
"""What ``accelerate launch --cpu`` sets: without it, on a machine with no GPU, each process runs alone."""


def require(module: str) -> None:
    """Skip when ``module`` is not installed; under CI (which installs it), fail instead."""
    if importlib.util.find_spec(module) is not None:
        return
    reason = f"{module} is not installed (`bash .ci/setup` installs it)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}, and CI is set: refusing to skip", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def deepspeed_ops() -> str:
    """``-e TORCH_EXTENSIONS_DIR=...``, where DeepSpeed's one JIT-built op on CPU is built once.

    DeepSpeed's CPU communication backend compiles a C++ op (shm_comm) the first time it runs
    (about a minute on 2 cores), into ``TORCH_EXTENSIONS_DIR``. The test hosts have a home of
    their own, so without this every test would build it again; with it they load this build.
    """
    require("deepspeed")
    abi = getattr(sys, "abiflags", "")
    directory = (
        Path.home() / ".cache" / "torch_extensions" / f"py{sys.version_info.major}{sys.version_info.minor}{abi}_cpu"
    )
    build = (
        "from deepspeed.accelerator import get_accelerator\n"
        "builder = get_accelerator().create_op_builder('ShareMemCommBuilder')\n"
        "builder is None or builder.load()\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(directory)}
    built = subprocess.run(
        [sys.executable, "-c", build], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return f"TORCH_EXTENSIONS_DIR={directory}"


def ok_lines(logs: str, script: str, world_size: int) -> dict[int, str]:
    """Global rank -> host of every ``<script>: host=H rank=R ... world_size=W ... ok`` line."""
    pattern = re.compile(rf"^\[(h\d) rank (\d+)\] {script}: host=(h\d) rank=(\d+) .*world_size={world_size} .* ok$")
    seen = {}
    for line in logs.splitlines():
        match = pattern.match(line)
        if match:
            label, label_rank, host, rank = match.groups()
            assert (label, label_rank) == (host, rank), line
            seen[int(rank)] = host
    return seen


def launch_and_check(cluster: Cluster, script: str, *env: str) -> None:
    name = job_name(script.replace("_", "-"))
    assignments = [arg for value in env for arg in ("-e", value)]
    launched = run_cli(
        cluster,
        "launch",
        "--hosts",
        "h0,h1",
        "--nproc-per-node",
        "2",
        "--name",
        name,
        "--wait",
        *assignments,
        f"examples/{script}.py",
        timeout=300,
    )
    read = run_cli(cluster, "logs", name)
    logs = read.stdout
    assert launched.returncode == 0 and read.returncode == 0, launched.stdout + launched.stderr + logs + read.stderr
    ranks = ok_lines(logs, script, 4)
    assert sorted(ranks) == [0, 1, 2, 3] and sorted(ranks.values()) == ["h0", "h0", "h1", "h1"], logs


def submit_and_check(slurm: SlurmCluster, script: str, *env: str) -> None:  # noqa: F811
    name = job_name(script.replace("_", "-"))
    output = slurm.jobs_dir / f"{name}.out"
    assignments = [arg for value in env for arg in ("-e", value)]
    submitted = sbatch_cli(
        slurm,
        "sbatch",
        "--submit",
        "--nodes=2",
        "--nproc-per-node=1",  # 2 x 2 runs under launch already; here the SLURM path is what counts
        "--name",
        name,
        f"--sbatch-arg=--output={output}",
        *assignments,
        f"examples/{script}.py",
    )
    assert submitted.returncode == 0, submitted.stderr

    ended = slurm.wait_for_job_end(slurm_job_of(name, slurm.cluster.node_state_dir), timeout=300)

    logs = sbatch_cli(slurm, "logs", name).stdout
    assert (ended["JobState"], ended["ExitCode"]) == ("COMPLETED", "0:0"), (ended, output.read_text(), logs)
    ranks = ok_lines(logs, script, 2)
    assert sorted(ranks) == [0, 1] and len(set(ranks.values())) == 2, logs


@pytest.fixture
def slurm_jobs_cancelled(slurm: SlurmCluster) -> Iterator[None]:  # noqa: F811
    yield
    slurm.cancel_all_jobs()


@pytest.mark.usefixtures(kill_jobs_left_running.__name__)
def test_accelerate_script_under_launch(cluster: Cluster) -> None:
    require("accelerate")
    launch_and_check(cluster, "accelerate_sum", ACCELERATE_ENV)


@pytest.mark.usefixtures(kill_jobs_left_running.__name__)
def test_deepspeed_script_under_launch(cluster: Cluster, deepspeed_ops: str) -> None:
    launch_and_check(cluster, "deepspeed_train", deepspeed_ops)


@pytest.mark.slurm
@pytest.mark.usefixtures(slurm_jobs_cancelled.__name__)
def test_accelerate_script_under_sbatch(slurm: SlurmCluster) -> None:  # noqa: F811
    require("accelerate")
    submit_and_check(slurm, "accelerate_sum", ACCELERATE_ENV)


@pytest.mark.slurm
@pytest.mark.usefixtures(slurm_jobs_cancelled.__name__)
def test_deepspeed_script_under_sbatch(slurm: SlurmCluster, deepspeed_ops: str) -> None:  # noqa: F811
    submit_and_check(slurm, "deepspeed_train", deepspeed_ops)


HEAD_OR_WORKER = (
    'if [ "$NODE_RANK" = 0 ]; then echo "head --port=$MASTER_PORT"; '
    'else echo "worker --address=$MASTER_ADDR:$MASTER_PORT"; fi'
)
"""The README's recipe for Ray (``ray start --head`` on the first host, workers elsewhere), with
echo in place of ``ray start``: what each host is told comes from ``--runner exec``'s variables."""


@pytest.mark.usefixtures(kill_jobs_left_running.__name__)
def test_exec_runner_tells_the_first_host_from_the_others(cluster: Cluster) -> None:
    name = job_name("head-worker")

    launched = run_cli(
        cluster,
        "launch",
        "--runner",
        "exec",
        "--hosts",
        "h0,h1",
        "--name",
        name,
        "--wait",
        "--",
        "bash",
        "-c",
        HEAD_OR_WORKER,
    )

    assert launched.returncode == 0, launched.stdout + launched.stderr
    lines = sorted(
        line for line in run_cli(cluster, "logs", name).stdout.splitlines() if "head" in line or "worker" in line
    )
    assert len(lines) == 2, lines
    head = re.fullmatch(r"\[h0\] head --port=(\d+)", lines[0])
    worker = re.fullmatch(r"\[h1\] worker --address=(\S+):(\d+)", lines[1])
    assert head is not None and worker is not None, lines
    assert worker[2] == head[1]  # the workers reach the head at the port picked free on h0
