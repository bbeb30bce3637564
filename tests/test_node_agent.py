"""NodeAgent's request/answer pairing over a fake agent that answers slowly (no SSH)."""

from __future__ import annotations

import asyncio
import json

import pytest

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
