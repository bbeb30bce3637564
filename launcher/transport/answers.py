"""Answers matched to requests, so that several requests are in flight on one agent at once.

The node agent answers one request at a time, in the order they came, one JSON line each
(``node/agent.py``): the answer to a request is the first line no earlier request took.
Each request sent leaves its future in a FIFO; whoever waits reads the lines for everyone,
one at a time under ``reading``, and hands each to the FIFO's head. A request whose caller
left (cancelled, timed out) keeps its place, so that its late answer is read and dropped,
never taken for another request's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from launcher.errors import HostError

Message = dict[str, Any]


class Answers:
    """The answers still to come on one agent's connection, in the order of the requests."""

    def __init__(self, receive: Callable[[], Awaitable[Message]]) -> None:
        self._receive = receive
        self._queue: deque[asyncio.Future[Message] | None] = deque()
        """One entry per request sent and not answered yet; None: a stream left unfinished."""
        self.reading = asyncio.Lock()
        """Held by whoever reads from the connection (one line, or a whole stream)."""

    def expect(self) -> asyncio.Future[Message]:
        """Where the answer of the request about to be written goes: call it before writing."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._queue.append(future)
        return future

    async def wait(self, future: asyncio.Future[Message], timeout: float | None) -> Message:
        """The answer for ``future``. ``timeout`` bounds each line read meanwhile (as when
        the requests went one at a time); on a timeout or a cancellation the answer, when it
        comes, is dropped."""
        try:
            while not future.done():
                async with self.reading:
                    if not future.done():
                        await self._read_one(timeout)
            return future.result()
        except BaseException:
            if not future.cancel():
                future.exception()  # this call raises already: the future's error is not lost
            raise

    async def drain(self) -> None:
        """Read the answers of every request sent so far; the caller holds ``reading``."""
        while self._queue:
            await self._read_one(None)

    def left_stream(self) -> None:
        """A stream's reader stopped before its answer (the caller holds ``reading`` and no
        request went after it): its remaining lines, up to its answer, are dropped."""
        self._queue.appendleft(None)

    async def _read_one(self, timeout: float | None) -> None:
        try:
            message = await asyncio.wait_for(self._receive(), timeout)
        except HostError as exc:
            # The connection is gone: every answer still awaited with it.
            for pending in self._queue:
                if pending is not None and not pending.done():
                    pending.set_exception(exc)
            self._queue.clear()
            raise
        head = self._queue[0] if self._queue else None
        if head is None and "ok" not in message:
            return  # a line of a stream left unfinished (or of none: the agent answers only what it is asked)
        if self._queue:
            self._queue.popleft()
        if head is not None and not head.done():
            head.set_result(message)
