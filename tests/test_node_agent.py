"""NodeAgent's request/answer pairing over a fake agent that answers slowly (no SSH), and the
agent's greeting."""

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

from launcher import __version__, node
from launcher.errors import HostError
from launcher.hosts import Host
from launcher.ssh import NodeAgent


class SlowAgent:
    """Answers each request line with ``{"ok": true, "op": <op>}`` after ``delay`` seconds, in order."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()
        self.requests: list[str] = []
        self._pending: list[asyncio.Task[None]] = []

    # the writer side
    def write(self, data: bytes) -> None:
        op = json.loads(data)["op"]
        self.requests.append(op)
        previous = self._pending[-1] if self._pending else None
        self._pending.append(asyncio.ensure_future(self._answer(op, previous)))

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    # the reader side
    async def readline(self) -> bytes:
        return await self.answers.get()

    async def _answer(self, op: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous  # the real agent answers one request after the other
        await asyncio.sleep(self.delay)
        await self.answers.put((json.dumps({"ok": True, "op": op}) + "\n").encode())


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
        start = asyncio.ensure_future(agent.call("start"))
        await asyncio.sleep(0.05)
        start.cancel()  # Ctrl-C while the node is still starting the job
        with pytest.raises(asyncio.CancelledError):
            await start
        answer = await agent.call("kill", timeout=5)
        return answer["op"], fake.requests

    op, requests = asyncio.run(scenario())
    assert op == "kill"
    assert requests == ["start", "kill"]


def test_a_timed_out_call_does_not_shift_the_answers() -> None:
    async def scenario() -> list[str]:
        fake = SlowAgent(delay=0.3)
        agent = agent_over(fake)
        with pytest.raises(HostError, match=r"no answer to status within 0\.1 s"):
            await agent.call("status", timeout=0.1)
        first = await agent.call("logs", timeout=5)
        second = await agent.call("kill", timeout=5)
        return [first["op"], second["op"]]

    assert asyncio.run(scenario()) == ["logs", "kill"]


def test_the_agent_greets_before_any_request_then_answers_in_order() -> None:
    stdout = io.StringIO()

    node.serve(io.StringIO('{"op": "no-such-op"}\n\n{"op": "status"}\n'), stdout)

    greeting, *answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert greeting["ok"] and greeting["version"] == __version__
    assert greeting["hostname"] == socket.gethostname() and greeting["pid"] == os.getpid()
    assert answers[0] == {"ok": False, "error": "unknown request 'no-such-op'"}
    assert len(answers) == 2 and "error" in answers[1]  # status without a job name: refused, not fatal


def test_the_greeting_is_read_before_the_first_answer() -> None:
    async def scenario() -> tuple[dict[str, object], str]:
        fake = SlowAgent(delay=0.05)
        await fake.answers.put(b'{"ok": true, "hostname": "node7"}\n')
        agent = agent_over(fake)
        info = await agent.greeting(timeout=5)
        answer = await agent.call("status", timeout=5)
        return info, answer["op"]

    info, op = asyncio.run(scenario())
    assert info["hostname"] == "node7"
    assert op == "status"


def test_an_agent_that_never_greets_is_named_after_the_timeout() -> None:
    async def scenario() -> None:
        await agent_over(SlowAgent(delay=0)).greeting(timeout=0.1)

    with pytest.raises(HostError, match=r"h0: the node agent did not start within 0\.1 s"):
        asyncio.run(scenario())


def test_idle_ends_a_wait_only_when_the_launcher_has_gone() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as stdin:
        idle = node._idle_until_hang_up(stdin)
        idle(0.01)  # nothing arrived: just a pause
        os.write(write_end, b'{"op": "status"}\n')
        idle(0.01)  # a request waiting for its turn is no hang-up
        assert stdin.readline() == '{"op": "status"}\n'
        os.close(write_end)
        with pytest.raises(node.HungUp):
            idle(5)


def test_idle_without_a_real_stdin_just_sleeps() -> None:
    assert node._idle_until_hang_up(io.StringIO()) is time.sleep


def test_wait_answers_when_the_job_ends_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "this_run_dir", lambda job: tmp_path)
    me = psutil.Process()
    node.write_json(tmp_path / "started.json", {"pid": me.pid, "create_time": me.create_time(), "time": 1.0})
    ending = threading.Timer(0.5, node.write_json, (tmp_path / "exit.json", {"exit_code": 3, "time": 2.0}))
    ending.start()
    began = time.monotonic()

    assert node.wait_ended("job") == {"state": "failed"}
    assert time.monotonic() - began >= 0.5
