"""``launcher setup``: this exact launcher pip-installed into a Python on every host, from a
wheel built here and sent over SSH; what is missing there named; bad input in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cluster import Cluster
from launcher_cli import REPO, run_cli
from test_node_pythons import interpreter

from launcher._version import __version__


def setup_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", "setup", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def venv(where: Path, pip: bool) -> str:
    base = interpreter("3.10") or sys.executable
    subprocess.run([base, "-m", "venv", *([] if pip else ["--without-pip"]), str(where)], check=True, timeout=300)
    return str(where / "bin" / "python")


def installed_version(python: str) -> str:
    done = subprocess.run([python, "-c", "import launcher._version as v; print(v.__version__)"], capture_output=True)
    return done.stdout.decode().strip()


def test_setup_installs_this_version_and_names_what_is_missing(tmp_path: Path) -> None:
    python = venv(tmp_path / "venv", pip=True)
    done = setup_cli("--hosts", "localhost", "--python", python)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == f"localhost: launcher installed into {python}; its node side lacks psutil, cloudpickle there\n"
    )
    assert installed_version(python) == __version__
    assert not (REPO / "build").exists()  # the wheel was built from a copy of the checkout


@pytest.mark.parametrize(
    ("python", "message"),
    [
        ("/nonexistent/python", "localhost: python not found there: /nonexistent/python (pass --python PATH)"),
        ("NOPIP", "has no pip there (python -m ensurepip, or skip setup)"),
    ],
    ids=["no such python", "no pip"],
)
def test_setup_fails_in_one_line_naming_the_host(tmp_path: Path, python: str, message: str) -> None:
    if python == "NOPIP":
        python = venv(tmp_path / "venv", pip=False)
    done = setup_cli("--hosts", "localhost", "--python", python)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("Error: setup failed on 1 of 1 host(s) (localhost: ") and message in done.stderr


@pytest.mark.e2e
def test_setup_on_every_host_of_the_cluster_sharing_one_env(cluster: Cluster) -> None:
    where = cluster.workdir / f"setup-{uuid.uuid4().hex[:6]}"
    try:
        python = venv(where, pip=True)
        done = run_cli(cluster, "setup", "--hosts", "h0,h1,h2", "--python", python, timeout=600)
        assert done.returncode == 0, done.stderr
        assert sorted(line.split(":")[0] for line in done.stdout.splitlines()) == ["h0", "h1", "h2"]
        seen = cluster.hosts[1].run([python, "-c", "import launcher._version as v; print(v.__version__)"])
        assert seen.stdout.strip() == __version__
    finally:
        shutil.rmtree(where, ignore_errors=True)
