"""What a node answers when it cannot carry out a request."""

from __future__ import annotations

from collections.abc import Callable

from launcher.protocol.base import RefusalKind


class NodeError(Exception):
    """A request the node refuses; ``kind`` tells the launching side which error to raise."""

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind: RefusalKind = kind


class HungUp(Exception):
    """The launcher closed the connection while a request was waiting: nobody to answer."""


Idle = Callable[[float], None]
"""How a waiting request waits: up to that many seconds, raising HungUp once the launcher
has gone (the agent's ``idle_until_hang_up``; ``time.sleep`` where nobody can hang up)."""
