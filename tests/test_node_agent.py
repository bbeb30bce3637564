"""NodeAgent's request/answer pairing over a fake agent that answers slowly (no SSH), the
agent's greeting and its version check."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from launcher import __version__
from launcher.errors import AgentError, HostError, VersionMismatchError
from launcher.hosts.files import Host
from launcher.node import agent as node_agent
from launcher.node import logs as node_logs
from launcher.node.errors import HungUp, sleep_or_wake
from launcher.node.rundir import ExitRecord, RunDir, SupervisorStarted
from launcher.protocol.base import PROTOCOL_VERSION
from launcher.protocol.messages import Ended, Wait
from launcher.transport.agent import NodeAgent

HELLO = {"ok": True, "protocol": PROTOCOL_VERSION, "version": __version__, "hostname": "node7", "address": None}
HELLO |= {"python": "/usr/bin/python3", "pid": 1}


class SlowAgent:
    """Answers each request line after ``delay`` seconds, in order: a ``wait`` for job J with
    ``Ended(state=J)``, so that a test can tell which request an answer belongs to."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.requests: list[str] = []
        self._pending: list[asyncio.Task[None]] = []

    # the writer side
    def write(self, data: bytes) -> None:
        state = json.loads(data)["job"]
        self.requests.append(state)
        previous = self._pending[-1] if self._pending else None
        self._pending.append(asyncio.ensure_future(self._answer(state, previous)))

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    # the reader side
    async def readline(self) -> bytes:
        return await self.answers.get()

    async def _answer(self, state: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous  # the real agent answers one request after the other
        await asyncio.sleep(self.delay)
        await self.answers.put((json.dumps({"ok": True, "state": state}) + "\n").encode())


def agent_over(fake: SlowAgent) -> NodeAgent:
    async def nothing() -> None:
        return None

    async def why() -> str:
        return "gone"

    return NodeAgent(Host("h0"), fake, fake, nothing, why)


def test_an_answer_left_by_a_cancelled_call_is_not_taken_for_the_next_one() -> None:
    async def scenario() -> tuple[str, list[str]]:
        fake = SlowAgent(delay=0.2)
        agent = agent_over(fake)
        start = asyncio.ensure_future(agent.call(Wait(job="running")))
        await asyncio.sleep(0.05)
        start.cancel()  # Ctrl-C while the node is still answering
        with pytest.raises(asyncio.CancelledError):
            await start
        answer = await agent.call(Wait(job="killed"), timeout=5)
        return answer.state, fake.requests

    state, requests = asyncio.run(scenario())
    assert state == "killed"
    assert requests == ["running", "killed"]


def test_a_timed_out_call_does_not_shift_the_answers() -> None:
    async def scenario() -> list[str]:
        fake = SlowAgent(delay=0.3)
        agent = agent_over(fake)
        with pytest.raises(AgentError, match=r"no answer to wait within 0\.1 s"):
            await agent.call(Wait(job="running"), timeout=0.1)
        first = await agent.call(Wait(job="failed"), timeout=5)
        second = await agent.call(Wait(job="killed"), timeout=5)
        return [first.state, second.state]

    assert asyncio.run(scenario()) == ["failed", "killed"]


def test_the_agent_greets_before_any_request_then_answers_in_order() -> None:
    stdout = io.StringIO()

    node_agent.serve(io.StringIO('{"op": "no-such-op"}\n\n{"op": "status"}\nnot json\n'), stdout)

    greeting, *answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert greeting["ok"] and greeting["version"] == __version__ and greeting["protocol"] == PROTOCOL_VERSION
    assert greeting["hostname"] == socket.gethostname() and greeting["pid"] == os.getpid()
    assert answers[0] == {"ok": False, "kind": "bad_request", "error": "unknown request 'no-such-op'"}
    # status without a job name, and a line that is no JSON: refused, not fatal
    assert answers[1] == {"ok": False, "kind": "bad_request", "error": "Status: missing field 'job'"}
    assert answers[2]["kind"] == "bad_request" and len(answers) == 3


def test_the_greeting_is_read_before_the_first_answer() -> None:
    async def scenario() -> tuple[dict[str, object], str]:
        fake = SlowAgent(delay=0.05)
        await fake.answers.put((json.dumps(HELLO) + "\n").encode())
        agent = agent_over(fake)
        info = await agent.greeting(timeout=5)
        answer = await agent.call(Wait(job="succeeded"), timeout=5)
        return info.hostname, answer.state

    assert asyncio.run(scenario()) == ("node7", "succeeded")


@pytest.mark.parametrize(
    ("greeting", "message"),
    [
        ({**HELLO, "version": "0.0.9"}, f"h0: runs launcher 0.0.9, this machine {__version__}: install the same"),
        (
            {"ok": True, "version": "0.1.0", "hostname": "x", "pid": 3},
            f"h0: runs launcher 0.1.0, this machine {__version__}",
        ),
        ({**HELLO, "protocol": PROTOCOL_VERSION + 1}, f"protocol {PROTOCOL_VERSION + 1}, this machine protocol"),
    ],
    ids=["other version", "an older node's greeting", "other protocol"],
)
def test_a_node_with_another_launcher_is_refused_by_its_greeting(greeting: dict[str, object], message: str) -> None:
    async def scenario() -> None:
        fake = SlowAgent(delay=0)
        await fake.answers.put((json.dumps(greeting) + "\n").encode())
        await agent_over(fake).greeting(timeout=5)

    with pytest.raises(VersionMismatchError, match=message.replace(".", r"\.")) as caught:
        asyncio.run(scenario())
    assert caught.value.host == "h0" and caught.value.local_version == __version__


def test_an_answer_of_the_wrong_shape_names_the_field() -> None:
    async def scenario() -> None:
        fake = SlowAgent(delay=0)
        agent = agent_over(fake)
        await fake.answers.put(b'{"ok": true, "state": 3}\n')  # answers the next request
        fake.requests.append("queued")
        await agent.call(Wait(job="running"), timeout=5)

    with pytest.raises(AgentError, match=r"h0: unexpected answer to wait: Ended\.state: 3 is none of"):
        asyncio.run(scenario())


def test_a_refusal_raises_the_error_of_its_kind() -> None:
    from launcher.errors import JobRunningError, NodeRefusedError

    agent = agent_over(SlowAgent(delay=0))
    with pytest.raises(JobRunningError, match="h0: job j is already running here") as caught:
        agent._checked({"ok": False, "kind": "job_running", "error": "job j is already running here"}, Ended, "start")
    assert caught.value.host == "h0"
    with pytest.raises(NodeRefusedError, match="h0: surprise"):
        agent._checked({"ok": False, "kind": "some_new_kind", "error": "surprise"}, Ended, "start")


def test_an_agent_that_never_greets_is_named_after_the_timeout() -> None:
    async def scenario() -> None:
        await agent_over(SlowAgent(delay=0)).greeting(timeout=0.1)

    with pytest.raises(HostError, match=r"h0: the node agent did not start within 0\.1 s"):
        asyncio.run(scenario())


def test_idle_ends_a_wait_only_when_the_launcher_has_gone() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as stdin:
        idle = node_agent.idle_until_hang_up(stdin)
        idle(0.01)  # nothing arrived: just a pause
        os.write(write_end, b'{"op": "status"}\n')
        idle(0.01)  # a request waiting for its turn is no hang-up
        assert stdin.readline() == '{"op": "status"}\n'
        os.close(write_end)
        with pytest.raises(HungUp):
            idle(5)


def test_idle_without_a_real_stdin_just_sleeps() -> None:
    assert node_agent.idle_until_hang_up(io.StringIO()) is sleep_or_wake


def test_wait_answers_when_the_job_ends_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    run = RunDir.of("job")
    run.path.mkdir(parents=True)
    me = psutil.Process()
    run.write_started(SupervisorStarted(pid=me.pid, create_time=me.create_time(), child=me.pid, time=1.0))
    ending = threading.Timer(0.5, run.write_exit, (ExitRecord(exit_code=3, time=2.0),))
    ending.start()
    began = time.monotonic()

    assert node_logs.wait_ended(Wait(job="job")) == Ended(state="failed")
    assert time.monotonic() - began >= 0.5
