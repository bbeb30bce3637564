"""The node side travels, on the test cluster: a job whose ``--python`` has neither launcher
nor psutil nor libtmux runs, and its logs, status and kill work; a second launch finds the
node side in the hosts' cache (their home is shared, like an NFS home)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from launcher_cli import REPO, assert_one_line_error, job_name, leftovers, run_cli, status_of, wait_for
from test_node_pythons import python_or_skip

from launcher._version import __version__
from launcher.transport.node_side import node_side

pytestmark = pytest.mark.e2e

# launcher.context() in the rank: the node side's modules are on the job's PYTHONPATH.
SLEEPER = (
    "import sys, time, launcher\n"
    "print('up on', sys.version_info[:2], 'node', launcher.context().node_rank, flush=True)\n"
    "time.sleep(600)\n"
)


def node_cache(cluster: Cluster) -> Path:
    """The hosts' cache of node sides (in root's home, shared by every host, like an NFS home)."""
    home = cluster.hosts[0].run(["sh", "-c", "echo $HOME"]).stdout.strip() or "/root"
    return Path(home) / ".cache" / "launcher" / "node"


def cached(cluster: Cluster) -> set[str]:
    return {p.name for p in node_cache(cluster).iterdir()} if node_cache(cluster).is_dir() else set()


@pytest.fixture
def bare(cluster: Cluster) -> Iterator[tuple[str, Path]]:
    """A venv of Python 3.10 without pip, in the workdir every host sees, and a script."""
    where = cluster.workdir / f"bare-{uuid.uuid4().hex[:6]}"
    base = python_or_skip("3.10")
    subprocess.run([base, "-m", "venv", "--without-pip", str(where / "venv")], check=True, timeout=120)
    (where / "sleeper.py").write_text(SLEEPER)
    # A cold start: the archive travels (unless this checkout changed since: then it is another name).
    shutil.rmtree(node_cache(cluster) / node_side().digest, ignore_errors=True)
    before = cached(cluster)
    try:
        yield str(where / "venv" / "bin" / "python"), where
    finally:
        shutil.rmtree(where, ignore_errors=True)
        for name in cached(cluster) - before:
            shutil.rmtree(node_cache(cluster) / name, ignore_errors=True)


def launch_bare(cluster: Cluster, python: str, cwd: Path, name: str) -> subprocess.CompletedProcess[str]:
    args = ["--hosts", "h0,h1,h2", "--name", name, "--python", python, "--cwd", str(cwd), "--allow-mismatch"]
    return run_cli(cluster, "launch", "--runner", "python", *args, "sleeper.py")


@pytest.mark.parametrize("which", ["a bare venv", "the 3.10 interpreter itself"])
def test_a_job_runs_on_a_bare_python_and_a_second_launch_uses_the_cache(
    cluster: Cluster, bare: tuple[str, Path], which: str
) -> None:
    python, cwd = bare
    if which != "a bare venv":  # pyenv's own 3.10: neither launcher, psutil nor libtmux either
        python = python_or_skip("3.10")
    before = cached(cluster)
    sent: set[str] = set()
    for name in (job_name("bare"), job_name("bare2")):
        launched = launch_bare(cluster, python, cwd, name)
        assert launched.returncode == 0, launched.stderr
        # One copy, named by its hash, no temporary directory beside it; the second launch adds none.
        assert len(cached(cluster) - before) == 1 and (not sent or cached(cluster) - before == sent)
        sent = cached(cluster) - before
        wait_for(
            "every host's line", lambda name=name: run_cli(cluster, "logs", name).stdout.count("up on (3, 10)") == 3
        )
        assert [h["state"] for h in status_of(cluster, name)["hosts"]] == ["running"] * 3
        killed = run_cli(cluster, "kill", name)
        assert killed.returncode == 0, killed.stderr
        assert {h["state"] for h in status_of(cluster, name)["hosts"]} <= {"killed", "failed"}
        for host in cluster.hosts:
            assert leftovers(host, (f"/{name}/", "sleeper.py")) == []


def test_a_host_with_another_launcher_installed_runs_this_ones_node_side(
    cluster: Cluster, bare: tuple[str, Path]
) -> None:
    """h1's --python has launcher 0.0.1 on its path: the cached node side of this version wins there."""
    _, cwd = bare
    other = cwd / "old-site"
    shutil.copytree(REPO / "launcher", other / "launcher", ignore=shutil.ignore_patterns("__pycache__"))
    version = other / "launcher" / "_version.py"
    version.write_text(version.read_text().replace(f'__version__ = "{__version__}"', '__version__ = "0.0.1"'))
    python = cwd / "python-old"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={other} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    name = job_name("oldnode")
    before = cached(cluster)
    launched = launch_bare(cluster, str(python), cwd, name)
    assert launched.returncode == 0, launched.stderr
    assert len(cached(cluster) - before) == 1
    assert run_cli(cluster, "kill", name).returncode == 0


def test_a_host_whose_python_is_too_old_fails_the_launch_naming_it(cluster: Cluster, bare: tuple[str, Path]) -> None:
    """h1's --python is 3.8 (the same path is 3.10 on the others): one line naming h1, nothing started."""
    old = python_or_skip("3.8")
    _, cwd = bare
    python = f"/tmp/python-{uuid.uuid4().hex[:6]}"  # /tmp is private to each host
    for host in cluster.hosts:
        target = old if host.name == "h1" else python_or_skip("3.10")
        assert host.run(["ln", "-s", target, python]).returncode == 0
    name = job_name("oldpy")
    launched = launch_bare(cluster, python, cwd, name)
    assert_one_line_error(launched, "h1: its Python is 3.8", "the node side needs Python 3.9 or later")
    assert "h0:" not in launched.stderr and "h2:" not in launched.stderr
    for host in cluster.hosts:
        assert leftovers(host, (f"/{name}/", "sleeper.py")) == []
