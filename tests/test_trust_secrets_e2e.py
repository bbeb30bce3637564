"""Secrets stay private, on the real test cluster: a launch with ``-e WANDB_API_KEY=...`` and a
forwarded ``HF_TOKEN`` leaves the state directory, the run directories and every file holding
the job's environment or output readable by their user only (0700 / 0600), on every host and
on the launching side, also where an older version left the state directory 0755."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cluster import Cluster, TestHost
from launcher_cli import job_name, kill_jobs_left_running, run_cli, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

HOSTS = ("h0", "h1", "h2")


def mode_on(host: TestHost, path: Path) -> str:
    """``path``'s permission bits as ``host`` sees them (``stat -c %a``: ``700``)."""
    result = host.run(["stat", "-c", "%a", str(path)])
    assert result.returncode == 0, f"{host.name}: {result.stderr}"
    return result.stdout.strip()


def open_to_others(host: TestHost, run: Path) -> list[str]:
    """What the launcher wrote in ``run`` (torchrun's own log directory aside) with a group or
    other bit: torchrun's directory is the job's, and no other user can pass ``run`` (0700)."""
    found = host.run(["find", str(run), "-mindepth", "1", "-maxdepth", "2", "-not", "-path", "*/torchrun*"])
    assert found.returncode == 0, found.stderr
    paths = found.stdout.split()
    return [f"{p} {mode_on(host, Path(p))}" for p in paths if int(mode_on(host, Path(p)), 8) & 0o077]


def local_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_jobs_secrets_are_readable_by_its_user_only_on_every_host(cluster: Cluster) -> None:
    hosts = [h for h in cluster.hosts if h.name in HOSTS]
    state = cluster.node_state_dir / "launcher"
    for host in hosts:  # as an older version left it: open to all
        assert host.run(["mkdir", "-p", str(state / "runs")]).returncode == 0
        assert host.run(["chmod", "755", str(state), str(state / "runs")]).returncode == 0
    name = job_name("secrets")
    previous = os.umask(0o022)
    try:
        launched = run_cli(
            cluster,
            "launch", "--hosts", ",".join(HOSTS), "--name", name, "-e", "WANDB_API_KEY=s3cret",
            "tests/scripts/sleeper.py",
            HF_TOKEN="hf_e2e_token",
        )  # fmt: skip
    finally:
        os.umask(previous)
    assert launched.returncode == 0, launched.stdout + launched.stderr

    for host in hosts:
        run = state / "runs" / name / host.name
        wait_for(f"{host.name}'s first output", lambda h=host, r=run: h.exists(r / "started.json"), timeout=60)
        spec = host.read_file(run / "spec.json")
        assert '"s3cret"' in spec and '"hf_e2e_token"' in spec  # what the modes below protect
        directories = {str(p): mode_on(host, p) for p in (state, state / "runs", state / "runs" / name, run)}
        assert set(directories.values()) == {"700"}, (host.name, directories)
        files = [run / "spec.json", run / "output.log", run / "started.json", run.parent / f".{host.name}.lock"]
        assert {str(p): mode_on(host, p) for p in files} == {str(p): "600" for p in files}, host.name

    killed = run_cli(cluster, "kill", "--grace", "0", name)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    for host in hosts:  # the markers and records written since: the same
        assert open_to_others(host, state / "runs" / name / host.name) == [], host.name

    records = cluster.launcher_state_dir / "launcher"
    assert [local_mode(p) for p in (records, records / "jobs")] == [0o700, 0o700]
    assert local_mode(records / "jobs" / f"{name}.json") == 0o600
