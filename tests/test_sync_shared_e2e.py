"""End to end: a sync into a scratch disk that the hosts share and the launching side does not.

The most common setup without NFS for the code: a laptop syncs into the cluster's shared
scratch (``--remote-dir /scratch/me/proj``). Here the three hosts share
``cluster.scratch_dir`` (``start_cluster(shared_scratch=True)``) and nothing else: the
source is on the launching side only (``shared_disk=False``). One host writes the
directory, the others check it; a lost writer's commit is rolled back at the next sync.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster
from launcher_cli import job_name

from launcher.errors import JobError
from launcher.hosts.sources import resolve_hosts
from launcher.sync import commit as sync_commit
from launcher.sync.run import sync_tree
from launcher.transport.agent import NodeAgent, SshOptions

pytestmark = pytest.mark.e2e

STATE = ".launcher-sync-state"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster(3, tmp_path_factory.mktemp("scratch"), shared_disk=False, shared_scratch=True) as cluster:
        yield cluster


def cli(cluster: Cluster, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def project(cluster: Cluster, files: dict[str, str]) -> tuple[Path, Path]:
    """A tree on the launching side, and where it goes on the scratch."""
    name = job_name("proj")
    root = cluster.project_dir / name
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root, cluster.scratch_dir / name


def sync(cluster: Cluster, root: Path, remote: Path) -> subprocess.CompletedProcess[str]:
    hosts = cluster.write_hosts_file([h.name for h in cluster.hosts], name="scratch-hosts")
    return cli(cluster, root, "sync", "--hosts", str(hosts), "--remote-dir", str(remote))


def tree_on(cluster: Cluster, remote: Path) -> list[str]:
    """What every host sees under ``remote`` (the same on each, or the test fails)."""
    views = []
    for host in cluster.hosts:
        found = host.run(
            ["sh", "-c", 'cd "$1" && find . -type f ! -path "./.launcher-sync-*" | sort', "sh", str(remote)]
        )
        assert found.returncode == 0, found.stderr
        views.append(found.stdout.split())
    assert views[0] == views[1] == views[2], views
    return views[0]


def test_a_first_sync_is_written_once_and_every_host_sees_it(fleet: Cluster) -> None:
    files = {f"a/b/f{i}.py": f"V = {i}\n" for i in range(300)}
    root, remote = project(fleet, {**files, "run.py": "import a\n"})

    result = sync(fleet, root, remote)

    assert result.returncode == 0, result.stderr
    assert "h0  copied 301 file(s)" in result.stdout, result.stdout
    assert "h1  shares h0's directory" in result.stdout and "h2  shares h0's directory" in result.stdout
    assert "the same on every host" in result.stdout
    assert len(tree_on(fleet, remote)) == 301
    assert fleet.hosts[2].read_file(remote / "a" / "b" / "f7.py") == "V = 7\n"
    assert not remote.exists()  # the launching side does not see the scratch


def test_a_resync_carries_a_change_and_a_deletion_then_nothing(fleet: Cluster) -> None:
    root, remote = project(fleet, {"a.py": "A = 1\n", "gone.py": "G = 1\n", "pkg/b.py": "B = 1\n"})
    assert sync(fleet, root, remote).returncode == 0
    fleet.hosts[1].write_file(remote / "out.txt", "the job's own\n")
    (root / "a.py").write_text("A = 2\n")
    (root / "gone.py").unlink()

    second = sync(fleet, root, remote)

    assert second.returncode == 0, second.stderr
    assert "h0  copied 1 file(s) (6 B), deleted 1" in second.stdout, second.stdout
    assert tree_on(fleet, remote) == ["./a.py", "./out.txt", "./pkg/b.py"]
    assert all(h.read_file(remote / "a.py") == "A = 2\n" for h in fleet.hosts)
    third = sync(fleet, root, remote)
    assert third.stdout.count("copied 0 file(s)") == 3, third.stdout


def test_a_writer_lost_during_its_commit_is_rolled_back_and_the_next_sync_evens_every_host(
    fleet: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {f"m/f{i}.py": "old\n" for i in range(2000)}
    root, remote = project(fleet, {**old, "keep.py": "old\n"})
    assert sync(fleet, root, remote).returncode == 0
    for i in range(2000):
        (root / "m" / f"f{i}.py").write_text("new\n")
    (root / "keep.py").unlink()
    (root / "added.py").write_text("new\n")
    for key, value in fleet.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    commit, killed = sync_commit.commit, threading.Event()
    journal = fleet.scratch_disk / remote.name / STATE / "journal"

    async def writer_lost_mid_commit(agents: list[NodeAgent], token: str) -> list[object]:
        # h0 writes: as soon as its journal is on the disk, its agent is killed (SIGKILL,
        # nothing undone by itself), as a host that drops off in the middle of its commit.
        assert agents[0].hello is not None and agents[0].host.name == "h0"
        pid = agents[0].hello.pid

        def kill_when_committing() -> None:
            deadline = time.monotonic() + 60
            while not journal.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
            fleet.hosts[0].run(["kill", "-KILL", str(pid)])
            killed.set()

        watcher = threading.Thread(target=kill_when_committing)
        watcher.start()
        try:
            return await commit(agents, token)  # type: ignore[return-value]
        finally:
            await asyncio.to_thread(watcher.join)

    monkeypatch.setattr(sync_commit, "commit", writer_lost_mid_commit)
    hosts = resolve_hosts(str(fleet.write_hosts_file([h.name for h in fleet.hosts], name="scratch-hosts")))
    with pytest.raises(JobError) as caught:
        asyncio.run(sync_tree(str(root), hosts, remote_dir=str(remote), ssh=SshOptions()))
    assert killed.is_set() and "h0" in caught.value.errors, caught.value
    assert journal.exists()  # left for the next contact
    monkeypatch.undo()

    again = sync(fleet, root, remote)

    assert again.returncode == 0, again.stderr
    assert "the same on every host" in again.stdout, again.stdout
    listed = tree_on(fleet, remote)
    assert "./added.py" in listed and "./keep.py" not in listed and len(listed) == 2001
    assert {h.read_file(remote / "m" / "f1999.py") for h in fleet.hosts} == {"new\n"}
    assert not journal.exists()
    leftovers = fleet.hosts[1].run(["ls", "-A", str(remote)]).stdout.split()
    assert [n for n in leftovers if n.startswith(".launcher-sync-")] == [STATE]


def test_a_writer_cut_off_between_commit_and_finish_leaves_every_host_the_same_tree(
    fleet: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, remote = project(fleet, {"a.py": "old\n", "gone.py": "old\n"})
    assert sync(fleet, root, remote).returncode == 0
    (root / "a.py").write_text("new\n")
    (root / "gone.py").unlink()
    for key, value in fleet.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    commit, writer = sync_commit.commit, fleet.hosts[0]
    pids: list[int] = []

    async def cable_pulled_after_commit(agents: list[NodeAgent], token: str) -> list[object]:
        done: list[object] = await commit(agents, token)  # type: ignore[arg-type]
        assert agents[0].hello is not None and agents[0].host.name == writer.name
        pids.append(agents[0].hello.pid)
        writer.set_link(False)  # the finish cannot reach h0; keepalives give up on it
        return done

    monkeypatch.setattr(sync_commit, "commit", cable_pulled_after_commit)
    hosts = resolve_hosts(str(fleet.write_hosts_file([h.name for h in fleet.hosts], name="scratch-hosts")))
    try:
        with pytest.raises(JobError) as caught:
            asyncio.run(sync_tree(str(root), hosts, remote_dir=str(remote), ssh=SshOptions(keepalive=1.0)))
    finally:
        writer.set_link(True)
    assert list(caught.value.errors) == ["h0"] and "sync not finished on every host" in str(caught.value)
    monkeypatch.undo()
    # Healed, h0's old agent learns that its connection is gone (or gets the late finish)
    # and ends; until then it holds the lock, and a sync is refused, never mixed.
    deadline = time.monotonic() + 60
    while writer.run(["kill", "-0", str(pids[0])]).returncode == 0:
        assert time.monotonic() < deadline, "h0's agent outlived its connection"
        time.sleep(0.2)

    again = sync(fleet, root, remote)

    assert again.returncode == 0, again.stderr
    assert "the same on every host" in again.stdout, again.stdout
    assert tree_on(fleet, remote) == ["./a.py"]
    assert {h.read_file(remote / "a.py") for h in fleet.hosts} == {"new\n"}
    assert not (fleet.scratch_disk / remote.name / STATE / "journal").exists()
