"""What a node answers when it cannot carry out a request."""

from __future__ import annotations

import select
from typing import Protocol

from launcher.protocol.base import RefusalKind


class NodeError(Exception):
    """A request the node refuses; ``kind`` tells the launching side which error to raise."""

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind: RefusalKind = kind


class HungUp(Exception):
    """The launcher closed the connection while a request was waiting: nobody to answer."""


class Idle(Protocol):
    """How a waiting request waits: up to ``seconds``, or until ``wake`` (a file descriptor)
    is readable; raising HungUp once the launcher has gone (the agent's ``idle_until_hang_up``;
    ``sleep_or_wake`` where nobody can hang up)."""

    def __call__(self, seconds: float, wake: int | None = None) -> None: ...


def sleep_or_wake(seconds: float, wake: int | None = None) -> None:
    select.select([] if wake is None else [wake], [], [], seconds)
