"""The wire's tables, assembled from each module's messages, and its lines.

``REQUESTS`` finds a request's type by its ``op``; ``ANSWERS`` a request's answer type. Each
module of messages names its own (``JOB_ANSWERS``, ``LOG_ANSWERS``, ``DOCTOR_ANSWERS``, ``SYNC_ANSWERS``); this
module only adds them up, so no table is changed after it is made.
"""

from __future__ import annotations

import json
from typing import Any

from launcher.protocol.base import Refusal, Request
from launcher.protocol.codec import ProtocolError, decode, to_wire
from launcher.protocol.doctor import DOCTOR_ANSWERS
from launcher.protocol.logs import LOG_ANSWERS, LogBatch
from launcher.protocol.messages import JOB_ANSWERS
from launcher.protocol.stack import STACK_ANSWERS
from launcher.protocol.sync import SYNC_ANSWERS

ANSWERS: dict[type[Request[Any]], type[Any]] = {
    **JOB_ANSWERS,
    **LOG_ANSWERS,
    **DOCTOR_ANSWERS,
    **SYNC_ANSWERS,
    **STACK_ANSWERS,
}
REQUESTS: dict[str, type[Request[Any]]] = {cls.op: cls for cls in ANSWERS}


# ---------------------------------------------------------------------------- lines


def encode_request(request: Any) -> str:
    """``{"op": ..., fields...}`` and a newline."""
    return json.dumps({"op": request.op, **to_wire(request)}) + "\n"


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
    cls = REQUESTS.get(op) if isinstance(op, str) else None
    if cls is None:
        raise ProtocolError(f"unknown request {op!r}")
    return decode(cls, data)
