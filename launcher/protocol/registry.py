"""The wire's tables, assembled from each module's messages (the launching side's), and its lines.

``REQUESTS`` finds a request's type by its ``op``; ``ANSWERS`` a request's answer type. Each
module of messages names its own (``JOB_ANSWERS``, ``LOG_ANSWERS``, ``DOCTOR_ANSWERS``, ``SYNC_ANSWERS``); this
module only adds them up, so no table is changed after it is made. The lines are ``lines.py``'s,
which the node agent imports without this module (and so without every module of messages).
"""

from __future__ import annotations

from typing import Any

from launcher.protocol.base import Request
from launcher.protocol.doctor import DOCTOR_ANSWERS
from launcher.protocol.lines import decode_request, encode_answer, encode_batch, encode_request
from launcher.protocol.logs import LOG_ANSWERS
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

__all__ = ["ANSWERS", "REQUESTS", "decode_request", "encode_answer", "encode_batch", "encode_request"]
