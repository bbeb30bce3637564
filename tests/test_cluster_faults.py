"""The test cluster's options: hosts without a shared disk, crashes and reboots, cuts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, start_cluster

pytestmark = pytest.mark.e2e


def ssh(cluster: Cluster, host: str, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(cluster.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host, command],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def unshared(tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(2, tmp_path, shared_disk=False) as cluster:
        yield cluster


def test_default_cluster_shares_the_project_dir(cluster: Cluster) -> None:
    marker = cluster.project_dir / f"shared-{os.getpid()}"
    marker.write_text("code\n")
    try:
        assert all(host.read_file(marker) == "code\n" for host in cluster.hosts)
    finally:
        marker.unlink()


def test_hosts_without_a_shared_disk_start_with_an_empty_project_dir(unshared: Cluster) -> None:
    (unshared.project_dir / "train.py").write_text("print('launching side')\n")

    for host in unshared.hosts:
        assert host.exists(unshared.project_dir)
        assert host.run(["ls", "-A", str(unshared.project_dir)]).stdout == ""
        assert host.run(["ls", "-A", str(unshared.node_state_dir)]).stdout == ""


def test_what_a_host_writes_only_it_sees(unshared: Cluster) -> None:
    h0, h1 = unshared.hosts
    h0.write_file(unshared.project_dir / "sub" / "train.py", "print('h0')\n")
    # What an SSH session writes to its XDG_STATE_HOME, as the launcher's node does.
    result = ssh(unshared, "h0", 'mkdir -p "$XDG_STATE_HOME/launcher" && echo h0 > "$XDG_STATE_HOME/launcher/mark"')
    assert result.returncode == 0, result.stderr
    mark = unshared.node_state_dir / "launcher" / "mark"

    assert h0.read_file(unshared.project_dir / "sub" / "train.py") == "print('h0')\n"
    assert h0.read_file(mark) == "h0\n"
    assert not h1.exists(unshared.project_dir / "sub")
    assert not h1.exists(mark)
    assert not (unshared.project_dir / "sub").exists()
    assert not mark.exists()
    # Nor can a host find the others' disks under the (shared) workdir.
    assert h1.run(["ls", "-A", str(unshared.workdir / "disks")]).stdout == ""


def test_hosts_without_a_shared_disk_still_share_python(unshared: Cluster) -> None:
    for host in unshared.hosts:
        result = host.run([sys.executable, "-c", "import launcher, torch; print('ok')"], timeout=60)
        assert result.stdout == "ok\n", result.stderr


def test_one_host_gets_another_python_through_a_wrapper(unshared: Cluster) -> None:
    h0, h1 = unshared.hosts
    wrapper = unshared.project_dir / "python"
    h0.write_file(wrapper, f'#!/bin/sh\nexec {sys.executable} "$@"\n', mode=0o755)
    h1.write_file(wrapper, "#!/bin/sh\necho 'no python here' >&2\nexit 127\n", mode=0o755)

    assert h0.run([str(wrapper), "-c", "print(6 * 7)"]).stdout == "42\n"
    assert h1.run([str(wrapper), "-c", "print(6 * 7)"]).returncode == 127
