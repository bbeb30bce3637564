"""End to end on hosts that share no disk: sync, the same environment, and the job commands.

Each host of this cluster has its own ``project_dir`` and its own node state directory
(``start_cluster(shared_disk=False)``): a file the launching side writes there no host
sees until a sync copies it. The Python environment stays shared, like an image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from launcher_cli import assert_one_line_error, job_name, wait_for

pytestmark = pytest.mark.e2e

JOB = """\
import os, socket, sys
import helper
print(f"on {socket.gethostname()}: {helper.VALUE}", flush=True)
if os.environ.get("FAIL_ON") == socket.gethostname():
    raise RuntimeError("planned failure on " + socket.gethostname())
if os.environ.get("SLEEP"):
    import time
    time.sleep(float(os.environ["SLEEP"]))
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three hosts that share nothing (but the Python environment)."""
    with start_cluster(3, tmp_path_factory.mktemp("noshare"), shared_disk=False) as cluster:
        yield cluster


def cli(cluster: Cluster, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def hosts_file(cluster: Cluster) -> str:
    return str(cluster.write_hosts_file([h.name for h in cluster.hosts], name="noshare-hosts"))


def project(cluster: Cluster, name: str, files: dict[str, str]) -> Path:
    root = cluster.project_dir / name
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


@pytest.fixture
def kill_after(fleet: Cluster) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        cli(fleet, fleet.workdir, "kill", "--grace", "0", name)


def test_a_job_runs_on_three_hosts_only_after_sync(fleet: Cluster, kill_after: list[str]) -> None:
    root = project(fleet, "first", {"job.py": JOB, "helper.py": "VALUE = 'synced'\n"})
    hosts = hosts_file(fleet)
    name = job_name("nosync")
    kill_after.append(name)

    without = cli(fleet, root, "launch", "--hosts", hosts, "--name", name, "job.py")
    assert_one_line_error(without, "h0")  # not there: nothing started anywhere

    name = job_name("sync")
    kill_after.append(name)
    launched = cli(fleet, root, "launch", "--hosts", hosts, "--name", name, "--sync", "--wait", "job.py")
    assert launched.returncode == 0, launched.stderr + launched.stdout
    for host in fleet.hosts:
        assert host.read_file(root / "helper.py") == "VALUE = 'synced'\n"
    logs = cli(fleet, root, "logs", name)
    assert {f"on {h.name}: synced" for h in fleet.hosts} <= {
        line.split("] ", 1)[-1] for line in logs.stdout.splitlines()
    }
    status = json.loads(cli(fleet, root, "status", "--json", name).stdout)
    assert status["state"] == "succeeded"
    assert status["code"]["fingerprint"].startswith("tree ")
    assert status["code"]["same_on_every_host"] is True
    assert set(status["code"]["hosts"]) == {h.name for h in fleet.hosts}
    table = cli(fleet, root, "status", name).stdout
    assert "the same on every host" in table


def test_a_resync_propagates_one_change_and_one_deletion_and_no_ignored_file(fleet: Cluster) -> None:
    files = {"a.py": "A = 1\n", "gone.py": "G = 1\n", "pkg/b.py": "B = 1\n", ".launcherignore": "*.ckpt\ndata/\n"}
    root = project(fleet, "resync", files)
    hosts = hosts_file(fleet)
    first = cli(fleet, root, "sync", "--hosts", hosts)
    assert first.returncode == 0, first.stderr
    fleet.hosts[1].write_file(root / "output.txt", "written by the job\n")  # not the sync's to delete

    (root / "a.py").write_text("A = 2\n")
    (root / "gone.py").unlink()
    (root / "model.ckpt").write_text("weights\n")
    (root / "data").mkdir()
    (root / "data" / "set.bin").write_text("rows\n")
    dry = cli(fleet, root, "sync", "--hosts", hosts, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "  + a.py" in dry.stdout and "  - gone.py" in dry.stdout and "ckpt" not in dry.stdout
    assert fleet.hosts[0].read_file(root / "a.py") == "A = 1\n"  # a dry run changes nothing

    second = cli(fleet, root, "sync", "--hosts", hosts)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("copied 1 file(s)") == 3 and second.stdout.count("deleted 1") == 3, second.stdout
    for host in fleet.hosts:
        assert host.read_file(root / "a.py") == "A = 2\n"
        assert host.read_file(root / "pkg" / "b.py") == "B = 1\n"
        assert not host.exists(root / "gone.py")
        assert not host.exists(root / "model.ckpt") and not host.exists(root / "data")
    assert fleet.hosts[1].read_file(root / "output.txt") == "written by the job\n"

    third = cli(fleet, root, "sync", "--hosts", hosts)
    assert third.stdout.count("copied 0 file(s)") == 3, third.stdout


def test_in_a_git_tree_the_ignored_files_and_dot_git_do_not_arrive(fleet: Cluster) -> None:
    root = project(fleet, "repo", {"train.py": "print(1)\n", ".gitignore": "secret.txt\n", "secret.txt": "key\n"})
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "train.py", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (root / "untracked.py").write_text("print(2)\n")

    result = cli(fleet, root, "sync", "--hosts", hosts_file(fleet))
    assert result.returncode == 0, result.stderr
    assert "code git " in result.stdout and "+" in result.stdout.split("code git ")[1].split()[0]  # uncommitted
    for host in fleet.hosts:
        assert host.exists(root / "train.py") and host.exists(root / "untracked.py")
        assert not host.exists(root / "secret.txt")
        assert not host.exists(root / ".git")


def test_a_failure_on_one_host_leaves_every_host_its_previous_copy(fleet: Cluster) -> None:
    root = project(fleet, "atomic", {"a.py": "old\n", "z.py": "old\n"})
    hosts = hosts_file(fleet)
    assert cli(fleet, root, "sync", "--hosts", hosts).returncode == 0
    (root / "a.py").write_text("new\n")
    (root / "z.py").unlink()
    (root / "m").mkdir()
    (root / "m" / "inner.py").write_text("new\n")
    # On h1 a file of its own is where the tree now has a directory: h1's commit fails after
    # it deleted z.py and replaced a.py, and h0 and h2 have committed everything by then.
    fleet.hosts[1].write_file(root / "m", "h1's own\n")

    result = cli(fleet, root, "sync", "--hosts", hosts)
    assert_one_line_error(result, "h1", "m", "in the way", "every host keeps its previous copy")
    for host in fleet.hosts:
        assert host.read_file(root / "a.py") == "old\n", host.name
        assert host.read_file(root / "z.py") == "old\n", host.name
        assert not host.exists(root / "m" / "inner.py"), host.name
    assert fleet.hosts[1].read_file(root / "m") == "h1's own\n"
    hidden = [n for n in fleet.hosts[0].run(["ls", "-A", str(root)]).stdout.split() if n.startswith(".")]
    assert hidden == [".launcher-sync-state"]  # the directory's record, lock and journal; no staging left


def test_a_host_with_another_torch_is_refused(fleet: Cluster) -> None:
    root = project(fleet, "mismatch", {"job.py": JOB, "helper.py": "VALUE = 1\n"})
    wrapper = fleet.project_dir / "python"
    for host in fleet.hosts:
        host.write_file(wrapper, f'#!/bin/sh\nexec {sys.executable} "$@"\n', mode=0o755)
    other = fleet.hosts[2]
    fake = fleet.project_dir / "old-site"
    other.write_file(fake / "torch-1.13.1.dist-info" / "METADATA", "Name: torch\nVersion: 1.13.1\n")
    other.write_file(wrapper, f'#!/bin/sh\nPYTHONPATH={fake} exec {sys.executable} "$@"\n', mode=0o755)

    result = cli(fleet, root, "launch", "--hosts", hosts_file(fleet), "--python", str(wrapper), "--sync", "job.py")
    assert_one_line_error(result, "h2", "torch 1.13.1", "--allow-mismatch")
    assert "h0" not in result.stderr and "h1:" not in result.stderr
    assert not fleet.hosts[0].exists(root / "job.py")  # refused before the sync


def test_logs_status_and_kill_on_hosts_that_share_nothing(fleet: Cluster, kill_after: list[str]) -> None:
    root = project(fleet, "observe", {"job.py": JOB, "helper.py": "VALUE = 'observed'\n"})
    hosts = hosts_file(fleet)
    failing = job_name("fails")
    kill_after.append(failing)
    launched = cli(
        fleet,
        root,
        "launch",
        "--hosts",
        hosts,
        "--name",
        failing,
        "--sync",
        "-e",
        "FAIL_ON=h1",
        "-e",
        "SLEEP=60",
        "job.py",
    )
    assert launched.returncode == 0, launched.stderr
    followed = cli(fleet, root, "logs", "--follow", failing, timeout=120)
    for host in fleet.hosts:
        assert f"on {host.name}: observed" in followed.stdout
    status = json.loads(cli(fleet, root, "status", "--json", failing).stdout)
    assert status["state"] == "failed"
    assert status["root_cause"]["host"] == "h1"
    assert "planned failure on h1" in status["root_cause"]["exception"]

    running = job_name("runs")
    kill_after.append(running)
    launched = cli(fleet, root, "launch", "--hosts", hosts, "--name", running, "--sync", "-e", "SLEEP=300", "job.py")
    assert launched.returncode == 0, launched.stderr
    wait_for(
        "the job to run everywhere",
        lambda: json.loads(cli(fleet, root, "status", "--json", running).stdout)["state"] == "running",
        timeout=60,
    )
    killed = cli(fleet, root, "kill", "--grace", "2", running)
    assert killed.returncode == 0, killed.stderr + killed.stdout
    assert killed.stdout.count("none left") == 3, killed.stdout


def test_on_a_shared_disk_every_host_sees_the_source_and_is_left_alone(cluster: Cluster) -> None:
    root = project(
        cluster, f"shared-{job_name('s')}", {"a.py": "1\n", "data/rows.csv": "2\n", ".launcherignore": "data/\n"}
    )
    hosts = str(cluster.write_hosts_file([h.name for h in cluster.hosts], name="shared-hosts"))
    result = cli(cluster, root, "sync", "--hosts", hosts)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("the source itself") == len(cluster.hosts)
    assert sorted(p.name for p in root.iterdir()) == [".launcherignore", "a.py", "data"]
