"""Faults that grow with scale, bounded: ``reconnecting`` pauses and ends, the open-files
limit, ``--max-parallel`` in every fan-out. Stand-ins for the connections; no SSH."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from launcher.cli import cli
from launcher.errors import AgentError, AuthenticationError, JobRunningError, UnreachableError
from launcher.hosts.files import Host
from launcher.job import logs
from launcher.protocol.messages import Status
from launcher.transport import fanout
from launcher.transport.agent import DEFAULT_SSH, NodeAgent, SshOptions

HOST = Host("h0")


class FakeTime:
    """A clock that moves only when ``reconnecting`` pauses (or a session says it held)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0.0
        self.pauses: list[float] = []
        monkeypatch.setattr(fanout, "_clock", lambda: self.now, raising=False)
        monkeypatch.setattr(fanout, "_pause", self.pause, raising=False)

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


class StandIn:
    """``open_agent``'s stand-in: every login succeeds (or fails as told); counts them and
    stops a runaway loop with a non-HostError, so a broken retry fails instead of hanging."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, login_error: Exception | None = None) -> None:
        self.logins = 0
        self.login_error = login_error
        monkeypatch.setattr(fanout, "open_agent", self.open_agent)

    async def open_agent(self, host: Host, ssh: SshOptions, gate: asyncio.Semaphore | None = None) -> Any:
        self.logins += 1
        if self.logins > 200:
            raise RuntimeError("runaway: 200 logins")
        if self.login_error is not None:
            raise self.login_error
        return self

    async def close(self) -> None:
        pass


def failing(times: int, error: Exception, held: FakeTime | None = None, held_for: float = 0.0) -> Any:
    """A session that fails ``times`` times (each after ``held_for`` seconds), then returns."""
    calls = {"n": 0}

    async def session(agent: NodeAgent) -> None:
        calls["n"] += 1
        if held is not None:
            held.now += held_for
        if calls["n"] <= times:
            raise error

    return session


def run(session: Any, reconnect_for: float = 300.0, problems: list[str] | None = None) -> None:
    def told(label: str, message: str) -> None:
        if problems is not None:
            problems.append(message)

    asyncio.run(fanout.reconnecting(HOST, DEFAULT_SSH, session, told, reconnect_for))


def test_a_session_failing_after_each_login_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, agents = FakeTime(monkeypatch), StandIn(monkeypatch)
    problems: list[str] = []
    run(failing(7, AgentError("h0", "the node agent exited with status 1")), problems=problems)

    assert agents.logins == 8
    assert clock.pauses == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert problems == ["the node agent exited with status 1; reconnecting", "reconnected"]  # once per outage


def test_a_session_that_never_makes_progress_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, agents = FakeTime(monkeypatch), StandIn(monkeypatch)
    with pytest.raises(AgentError, match="exited"):
        run(failing(10**6, AgentError("h0", "the node agent exited")), reconnect_for=60.0)
    assert clock.now <= 60.0 + fanout.LONGEST_PAUSE
    assert agents.logins < 20


def test_a_session_that_held_starts_the_backoff_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection dropped after an hour of waiting is a new outage: retried at once, and
    its window counts from then."""
    clock, agents = FakeTime(monkeypatch), StandIn(monkeypatch)
    run(failing(3, AgentError("h0", "connection lost"), held=clock, held_for=3600.0), reconnect_for=60.0)
    assert agents.logins == 4
    assert clock.pauses == [0.5, 0.5, 0.5]


def test_logins_that_fail_back_off_then_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, agents = FakeTime(monkeypatch), StandIn(monkeypatch, UnreachableError("h0", "cannot connect: timed out"))
    with pytest.raises(UnreachableError):
        run(failing(0, AgentError("h0", "unused")), reconnect_for=30.0)
    assert clock.pauses[:4] == [0.5, 1.0, 2.0, 4.0]
    assert agents.logins < 20


@pytest.mark.parametrize(
    "refusal",
    [AuthenticationError("h0", "authentication failed: permission denied")],
)
def test_a_refused_login_is_given_up_at_once(monkeypatch: pytest.MonkeyPatch, refusal: Exception) -> None:
    clock, agents = FakeTime(monkeypatch), StandIn(monkeypatch, refusal)
    with pytest.raises(type(refusal)):
        run(failing(0, refusal))
    assert agents.logins == 1 and clock.pauses == []


def test_a_node_refusal_is_given_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, agents = FakeTime(monkeypatch), StandIn(monkeypatch)
    with pytest.raises(JobRunningError):
        run(failing(5, JobRunningError("h0", "a job named j already runs here")))
    assert agents.logins == 1 and clock.pauses == []


LIMITED = """
import asyncio, resource, sys
from launcher.errors import LauncherError
from launcher.cli import cli
from launcher.hosts.files import Host
from launcher.protocol.messages import Status
from launcher.transport.fanout import all_or_nothing, for_each_host

soft, hard, hosts, fanout = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

async def step():
    return None

async def main():
    if fanout == "all_or_nothing":
        await all_or_nothing([step() for _ in range(hosts)], [Host(f"h{i}") for i in range(hosts)], "failed")
    else:
        await for_each_host(list(range(hosts)), lambda _: step())

try:
    asyncio.run(main())
except LauncherError as exc:
    print("error:", exc)
print("soft:", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def limited(soft: int, hard: int, hosts: int, fan_out: str) -> str:
    """The fan-out run in a process of its own whose open-files limit is ``soft``/``hard``."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", LIMITED, str(soft), str(hard), str(hosts), fan_out],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout + done.stderr


@pytest.mark.parametrize("fan_out", ["all_or_nothing", "for_each_host"])
def test_launch_sync_and_the_rest_raise_the_soft_limit_to_the_hard_one(fan_out: str) -> None:
    assert limited(256, 2048, 200, fan_out) == "soft: 2048\n"


def test_ten_thousand_hosts_fit_a_hard_limit_of_twenty_thousand() -> None:
    """A socket per host: the estimate must not double it (it once refused this)."""
    assert limited(1024, 20000, 10000, "for_each_host") == "soft: 20000\n"


@pytest.mark.parametrize("fan_out", ["all_or_nothing", "for_each_host"])
def test_a_limit_too_low_for_the_hosts_is_named(fan_out: str) -> None:
    need = fanout.open_files_needed(1000)
    assert limited(256, 1024, 1000, fan_out) == (
        f"error: 1000 hosts need ~{need} open files; the limit is 1024 (ulimit -n)\nsoft: 1024\n"
    )


class Counting:
    """``open_agent``'s stand-in that counts the handshakes in flight under the gate it is
    given (as the real one holds it), then finds the host unreachable."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.in_flight = self.most = self.logins = 0
        monkeypatch.setattr(fanout, "open_agent", self.open_agent)
        monkeypatch.setattr(logs, "open_agent", self.open_agent)

    async def open_agent(self, host: Host, ssh: SshOptions, gate: asyncio.Semaphore | None = None) -> Any:
        async with gate or asyncio.Semaphore(1):
            self.logins += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            for _ in range(5):
                await asyncio.sleep(0)
            self.in_flight -= 1
        raise UnreachableError(host.label, "cannot connect: connection refused")


def test_a_fan_out_keeps_max_parallel_handshakes_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    logins = Counting(monkeypatch)
    ssh = SshOptions(max_parallel=3)
    hosts = [Host(f"h{i}") for i in range(20)]
    asyncio.run(fanout.for_each_host(hosts, lambda host: fanout.ask(host, ssh, Status(job="j"))))
    assert logins.logins == 20 and logins.most == 3


@pytest.mark.parametrize(
    "command",
    [["status"], ["kill"], ["logs"], ["logs", "--tail", "5"]],
)
def test_status_kill_and_logs_take_max_parallel(monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    logins = Counting(monkeypatch)
    hosts = ",".join(f"h{i}" for i in range(12))
    done = CliRunner().invoke(cli, [*command, "--max-parallel", "4", "--hosts", hosts, "j"])
    assert done.exit_code == 1, done.output
    assert "connection refused" in done.output
    assert logins.logins == 12 and logins.most == 4
