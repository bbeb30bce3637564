"""Several requests in flight on one agent (``transport/answers.py``): each answered its own,
in order, over a fake agent that shows how many requests it holds, and over the real agent."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from local_node import LocalNode

from launcher.errors import AgentError, ConnectionLostError, NodeRefusedError
from launcher.hosts.files import Host
from launcher.protocol.logs import LogBatch, LogEnd, LogRecord, Tail
from launcher.protocol.messages import NodeStatus, Status, Wait
from launcher.protocol.sync import SyncPut
from launcher.transport.agent import NodeAgent


class HoldingAgent:
    """Answers nothing until ``hold`` requests have come, then each in order, ``delays[job]``
    seconds after the one before: a ``wait`` for job J with ``Ended(state=J)`` (so the jobs
    are named after states). ``held``: how
    many requests it had received and not answered, at each answer."""

    def __init__(self, hold: int = 1, delays: dict[str, float] | None = None) -> None:
        self.hold, self.delays = hold, delays or {}
        self.requests: list[str] = []
        self.ops: list[str] = []
        self.held: list[int] = []
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._answering: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        request = json.loads(data)
        self.requests.append(request["job"])
        self.ops.append(request["op"])
        self._arrived.set()
        if self._answering is None:
            self._answering = asyncio.ensure_future(self._answer())

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        if self._answering is not None:
            self._answering.cancel()

    async def readline(self) -> bytes:
        return await self.lines.get()

    async def _answer(self) -> None:
        while len(self.requests) < self.hold:
            self._arrived.clear()
            await self._arrived.wait()
        for answered in range(10**6):
            while answered == len(self.requests):
                self._arrived.clear()
                await self._arrived.wait()
            job = self.requests[answered]
            await asyncio.sleep(self.delays.get(job, 0.01))
            self.held.append(len(self.requests) - answered)
            if self.ops[answered] == "tail":  # two batches of one record, then the answer
                for text in ("one", "two"):
                    await self.lines.put((json.dumps({"records": [[1.0, None, "o", text]]}) + "\n").encode())
                await self.lines.put(b'{"ok": true, "offset": 7}\n')
                continue
            await self.lines.put((json.dumps({"ok": True, "state": job}) + "\n").encode())


def agent_over(fake: HoldingAgent) -> NodeAgent:
    async def nothing() -> None:
        return None

    async def why() -> str:
        return "the agent exited"

    return NodeAgent(Host("h0"), fake, fake, nothing, why)


async def states(agent: NodeAgent, jobs: list[str], timeout: float = 5) -> list[str]:
    answers = await asyncio.gather(*(agent.call(Wait(job=job), timeout=timeout) for job in jobs))
    return [answer.state for answer in answers]


def sent(agent: NodeAgent, job: str, timeout: float = 5) -> asyncio.Future[str]:
    """A call started now: its request goes before those of calls started after it."""
    return asyncio.ensure_future(states(agent, [job], timeout))


def test_calls_made_together_are_in_flight_at_once_and_each_gets_its_own_answer() -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        fake = HoldingAgent(hold=3)  # one request at a time would wait for an answer that never comes
        agent = agent_over(fake)
        try:
            return await states(agent, ["running", "succeeded", "failed", "killed", "lost"]), fake.held
        finally:
            await agent.close()

    answered, held = asyncio.run(scenario())
    assert answered == ["running", "succeeded", "failed", "killed", "lost"]
    assert held[0] == 5  # every request had reached the agent before its first answer


def test_a_call_that_times_out_among_others_in_flight_does_not_shift_their_answers() -> None:
    async def scenario() -> tuple[list[str], str, list[str]]:
        fake = HoldingAgent(delays={"lost": 0.5})
        agent = agent_over(fake)
        try:
            first, late = sent(agent, "running"), sent(agent, "lost", timeout=0.1)
            after = [sent(agent, "succeeded"), sent(agent, "failed")]
            with pytest.raises(AgentError) as caught:
                await late
            assert fake.requests[:2] == ["running", "lost"]
            answered = await first + [state for call in after for state in await call]
            return answered, caught.value.message, await states(agent, ["killed"])
        finally:
            await agent.close()

    answered, message, next_one = asyncio.run(scenario())
    assert answered == ["running", "succeeded", "failed"]
    assert message == "no answer to wait within 0.1 s"
    assert next_one == ["killed"]


def test_a_call_cancelled_while_another_reads_for_it_leaves_its_answer_to_be_dropped() -> None:
    async def scenario() -> list[str]:
        fake = HoldingAgent(delays={"running": 0.2})
        agent = agent_over(fake)
        try:
            first, second = sent(agent, "running"), sent(agent, "lost")
            await asyncio.sleep(0.05)
            second.cancel()  # Ctrl-C: its request went out, its answer is still to come
            with pytest.raises(asyncio.CancelledError):
                await second
            assert fake.requests == ["running", "lost"]
            return await first + await states(agent, ["succeeded", "failed"])
        finally:
            await agent.close()

    assert asyncio.run(scenario()) == ["running", "succeeded", "failed"]


def test_a_lost_agent_fails_every_call_in_flight_with_the_same_error() -> None:
    class Gone(HoldingAgent):
        async def readline(self) -> bytes:
            if self.held:  # said once: the calls still waiting learn it from the first
                await asyncio.Event().wait()
            self.held.append(0)
            raise ConnectionResetError("reset by peer")

    async def scenario() -> list[BaseException | object]:
        agent = agent_over(Gone())
        calls = [agent.call(Wait(job=job), timeout=5) for job in ("running", "failed", "lost")]
        return await asyncio.gather(*calls, return_exceptions=True)

    failures = asyncio.run(scenario())
    assert [type(f) for f in failures] == [ConnectionLostError] * 3
    assert {str(f) for f in failures} == {"h0: connection lost: reset by peer"}


def test_a_stream_reads_its_lines_only_after_every_answer_in_flight() -> None:
    async def scenario() -> tuple[list[object], list[str]]:
        fake = HoldingAgent(delays={"lost": 0.3})
        agent = agent_over(fake)
        try:
            with pytest.raises(AgentError):
                await agent.call(Wait(job="lost"), timeout=0.1)  # its answer is still to come
            streamed = [message async for message in agent.stream(Tail(job="j", count=1))]
            return streamed, await states(agent, ["killed"])
        finally:
            await agent.close()

    streamed, after = asyncio.run(scenario())
    batches = [LogBatch(records=[LogRecord(1.0, None, "o", text)]) for text in ("one", "two")]
    assert streamed == [*batches, LogEnd(offset=7)]
    assert after == ["killed"]


def test_a_stream_left_before_its_end_leaves_no_line_for_the_next_call() -> None:
    async def scenario() -> tuple[object, list[str]]:
        agent = agent_over(HoldingAgent())
        try:
            async with contextlib.aclosing(agent.stream(Tail(job="j", count=1))) as stream:
                first = await anext(stream)  # the user stops reading (Ctrl-C in --follow) after it
            return first, await states(agent, ["killed", "failed"])
        finally:
            await agent.close()

    first, after = asyncio.run(scenario())
    assert first == LogBatch(records=[LogRecord(1.0, None, "o", "one")])
    assert after == ["killed", "failed"]


def test_calls_and_a_stream_in_flight_together_on_the_real_agent(node: LocalNode) -> None:
    async def scenario() -> tuple[list[object], list[object]]:
        agent = await node.open()
        try:
            before = [agent.call(SyncPut(token=f"t{i}", chunks=[])) for i in range(6)]
            calls = asyncio.gather(*before, agent.call(Status(job="j")), return_exceptions=True)
            for _ in range(3):
                await asyncio.sleep(0)  # the calls' requests go out before the stream's
            streamed = [message async for message in agent.stream(Tail(job="j", count=1))]
            after = await asyncio.gather(agent.call(SyncPut(token="u", chunks=[])), return_exceptions=True)
            return await calls + after, streamed
        finally:
            await agent.close()

    with node.environment():
        answers, streamed = asyncio.run(scenario())
    refusals = [str(a) for a in answers if isinstance(a, NodeRefusedError)]
    assert refusals == [f"localhost: no sync {t!r} under way here" for t in ("t0", "t1", "t2", "t3", "t4", "t5", "u")]
    assert [type(a) for a in answers if not isinstance(a, NodeRefusedError)] == [NodeStatus]
    assert streamed == [LogEnd(offset=0, ended=False, lost_node=None)]
