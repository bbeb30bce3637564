"""GPUs on the real test cluster, played by a stand-in nvidia-smi (``nvidia_smi_outputs.py``)
in each host's private /tmp: h0 has 2 H100s, h1 8 A100s of which its login environment
(here: the ``--python`` wrapper the agent and the job start through) gives the job 4 and 5,
as a scheduler's CUDA_VISIBLE_DEVICES does. The default process count, the job's
CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER, and ``--include`` are what the ranks see."""

from __future__ import annotations

import shlex
import sys
import uuid

import pytest
from cluster import Cluster
from launcher_cli import job_name, kill_jobs_left_running, run_cli, wait_until_ended
from nvidia_smi_outputs import (
    APPS,
    EIGHT_A100,
    H100_MIG_LIST,
    H100_MIG_QUERY,
    KILL_APPS,
    QUERY,
    TWO_H100,
    stand_in_text,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

GPU_ENV_SCRIPT = """\
import os, socket
e = os.environ
print(f"gpuenv host={socket.gethostname()} local_rank={e['LOCAL_RANK']} local_world={e['LOCAL_WORLD_SIZE']}"
      f" cvd={e.get('CUDA_VISIBLE_DEVICES')} order={e.get('CUDA_DEVICE_ORDER')}", flush=True)
"""


def set_up_hosts(cluster: Cluster, setups: dict[str, tuple[dict[str, tuple[str, int]], str | None]]) -> str:
    """Per host: a stand-in nvidia-smi and a python wrapper that puts it on PATH (and sets
    the host's CUDA_VISIBLE_DEVICES, if given); the wrapper's path, the same on every host."""
    base = f"/tmp/gpus-{uuid.uuid4().hex[:6]}"  # /tmp is private to each host
    for host in cluster.hosts:
        answers, allocation = setups.get(host.name, ({}, None))
        lines = ["#!/bin/sh", f"PATH={base}/bin:$PATH; export PATH"]
        if allocation is not None:
            # A login environment applies to the SSH session (the agent), not again to each
            # process the job starts through this wrapper: those carry the job marker.
            quoted = shlex.quote(allocation)
            lines.append(f'[ -n "$LAUNCHER_JOB" ] || {{ CUDA_VISIBLE_DEVICES={quoted}; export CUDA_VISIBLE_DEVICES; }}')
        lines.append(f'exec {sys.executable} "$@"')
        assert host.run(["mkdir", "-p", f"{base}/bin"]).returncode == 0
        if answers:
            host.write_file(f"{base}/bin/nvidia-smi", stand_in_text(answers), 0o755)
        host.write_file(f"{base}/python", "\n".join(lines) + "\n", 0o755)
    return f"{base}/python"


def rank_lines(cluster: Cluster, name: str) -> dict[str, list[str]]:
    assert wait_until_ended(cluster, name, timeout=120)["state"] == "succeeded"
    found: dict[str, list[str]] = {}
    for line in run_cli(cluster, "logs", name).stdout.splitlines():
        if "gpuenv host=" in line:
            host = line.split("host=")[1].split()[0]
            found.setdefault(host, []).append(line.split("gpuenv ", 1)[1])
    return {host: sorted(lines) for host, lines in found.items()}


@pytest.fixture
def script(cluster: Cluster) -> str:
    path = cluster.workdir / f"gpuenv_{uuid.uuid4().hex[:6]}.py"
    path.write_text(GPU_ENV_SCRIPT)
    return path.name


def test_each_node_runs_one_rank_per_gpu_it_may_use(cluster: Cluster, script: str) -> None:
    python = set_up_hosts(
        cluster,
        {"h0": ({QUERY: (TWO_H100, 0), APPS: ("", 0)}, None), "h1": ({QUERY: (EIGHT_A100, 0), APPS: ("", 0)}, "4,5")},
    )
    name = job_name("gpus")
    launched = run_cli(
        cluster, "launch", "--hosts", "h0,h1", "--name", name, "--python", python, "--cwd", str(cluster.workdir), script
    )
    assert launched.returncode == 0, launched.stderr
    assert rank_lines(cluster, name) == {
        "h0": [f"host=h0 local_rank={r} local_world=2 cvd=None order=PCI_BUS_ID" for r in (0, 1)],
        "h1": [f"host=h1 local_rank={r} local_world=2 cvd=4,5 order=PCI_BUS_ID" for r in (0, 1)],
    }


def test_include_counts_within_the_nodes_allocation(cluster: Cluster, script: str) -> None:
    python = set_up_hosts(cluster, {"h1": ({QUERY: (EIGHT_A100, 0), APPS: ("", 0)}, "4,5")})
    name = job_name("include")
    launched = run_cli(
        cluster, "launch", "--hosts", "h0,h1", "--include", "h1:1", "--name", name, "--python", python,
        "--cwd", str(cluster.workdir), script,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    assert rank_lines(cluster, name) == {"h1": ["host=h1 local_rank=0 local_world=1 cvd=5 order=PCI_BUS_ID"]}


def test_mig_runs_one_rank_and_refuses_include_by_index(cluster: Cluster, script: str) -> None:
    python = set_up_hosts(
        cluster, {"h0": ({QUERY: (H100_MIG_QUERY, 0), "-L": (H100_MIG_LIST, 0), APPS: ("", 0)}, None)}
    )
    name = job_name("mig")
    common = ["--name", name, "--python", python, "--cwd", str(cluster.workdir)]
    hosts = str(cluster.write_hosts_file(["h0"], name="mig"))
    launched = run_cli(cluster, "launch", "--hosts", hosts, *common, script)
    assert launched.returncode == 0, launched.stderr
    assert "MIG is on: 1 process per node" in launched.stderr
    assert rank_lines(cluster, name) == {"h0": ["host=h0 local_rank=0 local_world=1 cvd=None order=PCI_BUS_ID"]}
    refused = run_cli(cluster, "launch", "--hosts", "h0,h1", "--include", "h0:0", *common, "--force", script)
    assert refused.returncode != 0
    assert "MIG devices cannot be picked by index" in refused.stderr and "Traceback" not in refused.stderr


def test_a_kill_in_a_container_says_the_gpu_is_not_verified(cluster: Cluster) -> None:
    """h0's nvidia-smi lists a pid that is no process of h0 (each test host has its own pid
    namespace, as a container has): the kill is verified in h0's process table, and says
    the GPU memory is not verifiable, instead of claiming it."""
    python = set_up_hosts(cluster, {"h0": ({KILL_APPS: ("4000001\n", 0), QUERY: (TWO_H100, 0), APPS: ("", 0)}, None)})
    name = job_name("gpukill")
    hosts = str(cluster.write_hosts_file(["h0"], name="gpukill"))
    launched = run_cli(cluster, "launch", "--hosts", hosts, "--name", name, "--python", python, "--nproc-per-node",
                       "1", "--runner", "exec", "--", "sleep", "600")  # fmt: skip
    assert launched.returncode == 0, launched.stderr
    killed = run_cli(cluster, "kill", name)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "none left; GPU memory not verifiable in a container: nvidia-smi lists pid(s) 4000001" in killed.stdout
