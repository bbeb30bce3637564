"""The launching side against many simulated hosts (``sim_hosts.py``: asyncssh servers in a
helper process, each answering as a node agent): a launch, a status and a kill reach every
host exactly once each, never with more than ``max_parallel`` SSH handshakes in flight, and
with open files bounded by what the launcher itself reckons it needs.

100 hosts run in the normal suite; ``LAUNCHER_SIM_HOSTS=1000`` runs that many as well.
Times and CPU are measured by ``python -m bench.simulation``, not asserted here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sim_hosts import SimulatedHosts
from sim_launch import Measurement, measure_launch

from launcher.transport.fanout import open_files_needed

MANY = int(os.environ.get("LAUNCHER_SIM_HOSTS", "0") or 0)
EVERY_REQUEST = {"prepare": 1, "start": 1, "commit": 1, "status": 1, "kill": 1}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """~/.ssh for the simulated hosts and launcher's state, in a directory of the test's own."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # the test's key, not an agent's
    yield tmp_path


def simulate(hosts: int, max_parallel: int, home: Path) -> tuple[Measurement, dict[str, Any]]:
    with SimulatedHosts(hosts, home) as sim:
        measured = asyncio.run(measure_launch(sim.hosts, max_parallel))
        return measured, sim.stats()


def check_bounded(hosts: int, max_parallel: int, measured: Measurement, seen: dict[str, Any]) -> None:
    assert measured.status_states == {"running": hosts}
    assert measured.killed == hosts
    # One connection and one agent session per host for each of launch, status and kill.
    assert seen["connections"] == [3] * hosts
    assert seen["sessions"] == [3] * hosts
    assert seen["requests"] == [EVERY_REQUEST] * hosts
    # The fan-out is bounded, and parallel: not one host after another.
    assert 2 <= seen["most_handshaking"] <= max_parallel, seen["most_handshaking"]
    # A socket per host while the launch holds every host, and none left over after it
    # (status and kill open their own): within what raise_open_files_limit provides for.
    assert measured.peak_fds - measured.baseline_fds <= open_files_needed(hosts), measured


def test_a_launch_on_100_hosts_reaches_each_once_with_bounded_handshakes_and_files(home: Path) -> None:
    measured, seen = simulate(100, 8, home)
    check_bounded(100, 8, measured, seen)


@pytest.mark.skipif(MANY == 0, reason="set LAUNCHER_SIM_HOSTS=1000 to simulate that many hosts")
def test_a_launch_on_many_hosts_reaches_each_once_with_bounded_handshakes_and_files(home: Path) -> None:
    measured, seen = simulate(MANY, 128, home)
    check_bounded(MANY, 128, measured, seen)


def test_known_hosts_is_read_once_for_all_the_hosts_of_a_command(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncssh given the files reads and decodes known_hosts at every connection (the
    launching side's CPU grows with the hosts squared); the launcher reads it once per
    command, and every host's key is still checked against it (``check_bounded``: a key
    that did not match would have failed that host)."""
    import asyncssh
    import asyncssh.known_hosts

    reads: list[object] = []
    real = asyncssh.known_hosts.read_known_hosts
    counted = lambda files: reads.append(files) or real(files)  # noqa: E731
    monkeypatch.setattr(asyncssh, "read_known_hosts", counted)
    monkeypatch.setattr(asyncssh.known_hosts, "read_known_hosts", counted)  # what asyncssh given paths calls
    measured, seen = simulate(20, 8, home)
    check_bounded(20, 8, measured, seen)
    assert len(reads) == 1, len(reads)  # for the launch, the status and the kill of 20 hosts
