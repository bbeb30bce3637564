"""Faults that grow with scale, bounded: ``reconnecting`` pauses and ends, the open-files
limit, ``--max-parallel`` in every fan-out. Stand-ins for the connections; no SSH."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from launcher.errors import AgentError, AuthenticationError, JobRunningError, UnreachableError
from launcher.hosts.files import Host
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

    async def open_agent(self, host: Host, ssh: SshOptions) -> Any:
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
