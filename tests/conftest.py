"""Fixtures shared by the test suite: the real test cluster (see ``cluster.py``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from cluster import Cluster, start_cluster
from local_node import LocalNode

CLUSTER_HOSTS = 3


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (``sh -c '... &'``) has
    # SIGINT ignored, and every process it starts inherits that: the tests that press
    # Ctrl-C on the CLI (SIGINT to its pid, as a terminal does) would wait in vain.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The same for SIGHUP under ``nohup``: a tmux session killed by a test would leave its
    # pane's process and the job (which tmux hangs up) running.
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    config.addinivalue_line(
        "markers",
        "e2e: end-to-end test against real hosts (network namespaces running sshd); needs root",
    )
    config.addinivalue_line("markers", "slurm: runs on the test cluster's real SLURM (slurmctld, slurmd, munge)")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped on a machine without a GPU")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("e2e") is not None:
        require_root()


def require_root() -> None:
    """Skip a test that needs the cluster when not root; under CI, fail it instead.

    A skipped end-to-end suite looks green, so CI must never get there silently.
    """
    if os.geteuid() == 0:
        return
    reason = "the test cluster needs root (network namespaces, a bridge, sshd on port 22)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}, and CI is set: refusing to skip the end-to-end tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Hosts h0, h1, h2 with sshd, shared by the whole session."""
    require_root()
    running = start_cluster(CLUSTER_HOSTS, tmp_path_factory.mktemp("cluster"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def user_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Hosts h0, h1, h2 and a second login user without root (``cluster.user``), per module."""
    require_root()
    running = start_cluster(CLUSTER_HOSTS, tmp_path_factory.mktemp("user-cluster"), second_user=True)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def node() -> Iterator[LocalNode]:
    """One local node of the middle layer: the real agent, its own tmux server and state."""
    local = LocalNode.create()
    try:
        yield local
    finally:
        local.close()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask: whatever is created without an explicit mode is readable by all (the
    agents, tmux and supervisors a test starts inherit it)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
