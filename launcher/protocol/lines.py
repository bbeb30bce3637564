"""The wire's lines, and a request's type found by its ``op`` without importing every message module.

``OPS`` names, per op, the module of messages that holds its request and its class: the node
agent imports only the modules of the requests it is sent (a launch's agent never loads the
sync's or the doctor's messages: each module of dataclasses costs milliseconds of CPU at
import, on every node). ``registry.py``, the launching side's tables, holds them all; a test
checks that the two agree.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

from launcher.protocol.base import Refusal
from launcher.protocol.codec import ProtocolError, decode, to_wire

if TYPE_CHECKING:
    from launcher.protocol.logs import LogBatch

OPS: dict[str, tuple[str, str]] = {
    "prepare": ("messages", "Prepare"),
    "start": ("messages", "Start"),
    "commit": ("messages", "Commit"),
    "status": ("messages", "Status"),
    "kill": ("messages", "Kill"),
    "kill_all": ("messages", "KillAll"),
    "wait": ("messages", "Wait"),
    "results": ("messages", "ReadResults"),
    "logs": ("logs", "ReadLogs"),
    "tail": ("logs", "Tail"),
    "follow": ("logs", "Follow"),
    "checkup": ("doctor", "Checkup"),
    "sync_plan": ("sync", "SyncPlan"),
    "sync_look": ("sync", "SyncLook"),
    "sync_put": ("sync", "SyncPut"),
    "sync_verify": ("sync", "SyncVerify"),
    "sync_commit": ("sync", "SyncCommit"),
    "sync_finish": ("sync", "SyncFinish"),
    "sync_abort": ("sync", "SyncAbort"),
    "stack": ("stack", "TakeStacks"),
}
"""op -> (module of ``launcher.protocol``, request class)."""


def request_type(op: str) -> type[Any] | None:
    """The request class of ``op``, its module imported now if it was not; None if unknown."""
    where = OPS.get(op)
    if where is None:
        return None
    module, name = where
    cls: type[Any] = getattr(importlib.import_module(f"launcher.protocol.{module}"), name)
    return cls


def encode_request(request: Any) -> str:
    """``{"op": ..., fields...}`` and a newline; a request that writes its own line faster
    (``wire_line``, the same line: a test compares them) writes it."""
    own = getattr(request, "wire_line", None)
    line = own() if own is not None else None
    return line if line is not None else json.dumps({"op": request.op, **to_wire(request)}) + "\n"


def encode_answer(answer: Any) -> str:
    """The answer that ends a request: ``{"ok": true, ...}``, or a refusal with ``"ok": false``."""
    if isinstance(answer, Refusal):
        return json.dumps({"ok": False, **to_wire(answer)}) + "\n"
    return json.dumps({"ok": True, **to_wire(answer)}) + "\n"


def encode_batch(batch: LogBatch) -> str:
    """A message of a streamed answer: no ``"ok"``, so the launcher knows more is coming."""
    return json.dumps(to_wire(batch)) + "\n"


def decode_request(line: str) -> Any:
    """A request line -> its dataclass; ProtocolError when it is no request we know."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("a request must be a JSON object")
    op = data.pop("op", None)
    cls = request_type(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown request {op!r}")
    return decode(cls, data)
