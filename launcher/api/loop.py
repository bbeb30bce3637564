"""Synchronous calls into the async library, also from inside a running event loop.

``launcher.launch(...).wait()`` is plain blocking code, but a Jupyter cell already runs
inside an event loop, where ``asyncio.run`` refuses to start. So each call gets a private
loop: in the calling thread when no loop runs there, else in one worker thread of its
own, which the call joins before it returns. Nothing outlives the call: no loop, no
thread, no agent process (the coroutines close their connections).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


def loop_running() -> bool:
    """Whether this thread runs an event loop right now (a notebook, an async caller)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Portal:
    """A private event loop for a few calls from synchronous code: ``with Portal() as p: p.run(coro)``.

    The same loop serves every call until ``close()``, so that an async iterator can be
    driven one item at a time. Ctrl-C while a call waits cancels that call's coroutine
    (its ``finally`` blocks run) and raises KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="launcher")
            if loop_running()
            else None
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._pool is None:
            return self._runner.run(coro)
        future = self._pool.submit(self._runner.run, coro)
        try:
            return future.result()
        except BaseException:
            if not future.done():  # interrupted while the worker still runs the call
                loop = self._runner.get_loop()
                loop.call_soon_threadsafe(_cancel_all, loop)
                concurrent.futures.wait([future])
            raise

    def close(self) -> None:
        """Cancel what is left on the loop, close it, and end the worker thread."""
        if self._pool is None:
            self._runner.close()
            return
        try:
            self._pool.submit(self._runner.close).result()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Portal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end from synchronous code and return its value (or raise its error)."""
    with Portal() as portal:
        return portal.run(coro)


def iterate_sync(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """The items of the async iterator ``make()``, one at a time, as a plain iterator.

    The private loop lives while the iteration does: until the iterator is exhausted,
    closed (``break`` in a ``for`` loop closes it once it is collected), or garbage.
    """
    with Portal() as portal:
        items = make()

        async def step() -> list[T]:
            try:
                return [await anext(items)]
            except StopAsyncIteration:
                return []

        try:
            while batch := portal.run(step()):
                yield batch[0]
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                portal.run(aclose())
