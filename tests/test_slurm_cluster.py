"""The test SLURM itself: srun, sbatch, salloc and scancel reach real slurmd in the hosts."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import slurm_fixtures
from cluster import TestHost, remove_stale_clusters, start_cluster
from slurm_cluster import REGISTRY_DIR, SlurmCluster, SlurmError, remove_stale_slurms, start_slurm
from slurm_fixtures import require_slurm, slurm  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

JOB_TIMEOUT_S = 60.0
HOSTS = ["h0", "h1", "h2"]


@pytest.fixture(autouse=True)
def no_jobs_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """A job that one test leaves (it failed half-way) does not hold up the next one's nodes."""
    yield
    if "slurm" in request.fixturenames:
        request.getfixturevalue("slurm").cancel_all_jobs()


def hostnames(slurm: SlurmCluster, nodelist: str) -> list[str]:  # noqa: F811
    result = slurm.run(["scontrol", "show", "hostnames", nodelist])
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def processes_with(hosts: list[TestHost], fragment: str) -> dict[str, list[str]]:
    """Command lines holding ``fragment``, per host, as each host's process table has them."""
    return {host.name: [command for _, command in host.processes() if fragment in command] for host in hosts}


def wait_for(check: Callable[[], bool], describe: Callable[[], str], timeout: float = JOB_TIMEOUT_S) -> None:
    """Poll ``check`` until true; past ``timeout``, fail with what ``describe`` says then."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {describe()}")
        time.sleep(0.1)


def test_srun_runs_hostname_on_every_node(slurm: SlurmCluster) -> None:  # noqa: F811
    result = slurm.run(["srun", "--nodes=3", "hostname"], timeout=JOB_TIMEOUT_S)

    assert result.returncode == 0, result.stderr + slurm.logs()
    assert sorted(result.stdout.split()) == HOSTS


def test_sbatch_runs_a_script_on_three_nodes(slurm: SlurmCluster) -> None:  # noqa: F811
    output = slurm.jobs_dir / f"batch-{secrets.token_hex(4)}.out"
    script = slurm.jobs_dir / f"{output.stem}.sh"
    script.write_text(
        "#!/bin/sh\n"
        "#SBATCH --nodes=3\n"
        f"#SBATCH --output={output}\n"
        'echo "batch host: $(hostname)"\n'
        'scontrol show hostnames "$SLURM_JOB_NODELIST"\n'
    )

    result = slurm.run(["sbatch", "--parsable", str(script)])
    assert result.returncode == 0, result.stderr + slurm.logs()
    job = result.stdout.strip()
    assert job.isdigit(), result.stdout

    ended = slurm.wait_for_job_end(job, timeout=JOB_TIMEOUT_S)

    assert (ended["JobState"], ended["ExitCode"], ended["NumNodes"]) == ("COMPLETED", "0:0", "3"), ended
    assert output.is_file(), sorted(p.name for p in slurm.jobs_dir.iterdir())
    lines = output.read_text().splitlines()
    assert lines[0] == "batch host: h0"  # the batch step runs on the first node
    assert lines[1:] == HOSTS


def test_salloc_runs_a_command_in_an_allocation(slurm: SlurmCluster) -> None:  # noqa: F811
    command = 'echo "$(hostname) $SLURM_JOB_NUM_NODES $SLURM_JOB_NODELIST"; srun hostname'

    result = slurm.run(["salloc", "--nodes=2", "sh", "-c", command], timeout=JOB_TIMEOUT_S)

    assert result.returncode == 0, result.stderr + slurm.logs()
    first, *step_hosts = result.stdout.splitlines()
    here, num_nodes, nodelist = first.split()
    assert here == socket.gethostname()  # salloc runs the command on the launching side
    assert num_nodes == "2"
    allocated = hostnames(slurm, nodelist)
    assert len(allocated) == 2 and set(allocated) <= set(HOSTS), allocated
    assert sorted(step_hosts) == allocated


def test_scancel_ends_a_running_job_and_its_processes(slurm: SlurmCluster) -> None:  # noqa: F811
    # A duration no other process has: it tells this job's sleeps in the hosts' tables.
    duration = f"3600.{secrets.randbelow(10**6):06d}"
    submitted = slurm.run(["sbatch", "--parsable", "--nodes=3", f"--wrap=srun sleep {duration}"])
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    hosts = slurm.cluster.hosts

    def job_state() -> str:
        # Empty once the job has ended: squeue lists pending, running and completing jobs.
        result = slurm.run(["squeue", "--noheader", f"--jobs={job}", "--format=%T"])
        return result.stdout.strip() if result.returncode == 0 else f"squeue failed: {result.stderr.strip()}"

    def sleeps() -> dict[str, list[str]]:
        return processes_with(hosts, f"sleep {duration}")

    wait_for(lambda: all(sleeps().values()), lambda: f"sleep {duration} not on every host: {sleeps()}")
    assert job_state() == "RUNNING"

    cancelled = slurm.run(["scancel", job])

    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: job_state() == "", lambda: f"job {job} still {job_state()!r}")
    wait_for(
        lambda: not any(sleeps().values()) and not any(processes_with(hosts, "slurmstepd").values()),
        lambda: f"left on the hosts: {sleeps()} {processes_with(hosts, 'slurmstepd')}",
        timeout=10,
    )
    assert slurm.job_info(job)["JobState"] == "CANCELLED"


def test_env_points_commands_at_this_slurm_only(slurm: SlurmCluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("SLURM_JOB_ID", "999999")  # as if the suite itself ran in an allocation

    env = slurm.env()

    assert env["SLURM_CONF"] == str(slurm.conf)
    assert "SLURM_JOB_ID" not in env
    result = slurm.run(["scontrol", "show", "config"])
    assert result.returncode == 0, result.stderr
    assert f"ClusterName             = {slurm.cluster_name}" in result.stdout


# --- start and stop -------------------------------------------------------------------


@pytest.mark.parametrize("ci", ["", "true"])
def test_a_missing_slurm_skips_but_fails_under_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_fixtures, "missing_slurm_programs", lambda: ["slurmd", "munged"])
    monkeypatch.setenv("CI", ci)

    with pytest.raises(pytest.fail.Exception if ci else pytest.skip.Exception, match="missing slurmd, munged"):
        require_slurm()


def test_close_stops_every_daemon_and_removes_its_files(tmp_path: Path) -> None:
    require_slurm()
    with start_cluster(1, tmp_path / "one") as cluster:
        with start_slurm(cluster) as one:
            daemons = [psutil.Process(pid) for pid in one.daemon_pids.values()]
            assert sorted(d.name() for d in daemons) == ["munged", "slurmctld", "slurmd"]
            record = REGISTRY_DIR / f"{cluster.token}.json"
            assert record.is_file()

        assert not [d for d in daemons if d.is_running() and d.status() != psutil.STATUS_ZOMBIE]
        assert not one.dir.exists()
        assert not record.exists()
        assert [command for _, command in cluster.hosts[0].processes() if "slurm" in command] == []


def test_a_failed_start_stops_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_slurm()
    started: dict[str, psutil.Process] = {}
    spawn = SlurmCluster._spawn

    def spawn_and_note(self: SlurmCluster, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        process = spawn(self, name, argv)
        started[name] = psutil.Process(process.pid)
        return process

    monkeypatch.setattr(SlurmCluster, "_spawn", spawn_and_note)
    # munged starts; slurmctld then exits on the first line it does not know.
    monkeypatch.setattr(SlurmCluster, "_slurm_conf", lambda self: "NoSuchOption=1\n")
    with start_cluster(1, tmp_path / "one") as cluster:
        with pytest.raises(SlurmError, match="slurmctld exited"):
            start_slurm(cluster)

        assert list(started) == ["munged", "slurmctld"]
        assert not [p for p in started.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not (cluster.workdir / "slurm").exists()
        assert not (REGISTRY_DIR / f"{cluster.token}.json").exists()


CRASHING_RUN = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from cluster import start_cluster
from slurm_cluster import start_slurm
cluster = start_cluster(1, Path(sys.argv[1]))
slurm = start_slurm(cluster)
print(json.dumps({"token": cluster.token, "dir": str(slurm.dir), "pids": list(slurm.daemon_pids.values())}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close(), no finally
"""


def test_the_next_start_removes_what_a_crashed_run_left(tmp_path: Path) -> None:
    require_slurm()
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN, str(tmp_path / "crashed"), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    left = json.loads(crashed.stdout)
    daemons = [psutil.Process(pid) for pid in left["pids"]]
    assert all(d.is_running() for d in daemons)  # else this test proves nothing

    remove_stale_clusters()
    assert left["token"] in remove_stale_slurms()

    assert not [d for d in daemons if d.is_running() and d.status() != psutil.STATUS_ZOMBIE]
    assert not os.path.exists(left["dir"])
    assert not (REGISTRY_DIR / f"{left['token']}.json").exists()
