"""The return values that the ranks of ``launcher.run`` left in the run directory.

Each rank's worker (``call_function``) writes ``results/<rank>.pkl``; this side only reads
bytes and sends them on, base64 in JSON: the agent never unpickles anything (and never
imports cloudpickle).
"""

from __future__ import annotations

import base64

from launcher.node.rundir import RunDir
from launcher.protocol.base import RESULT_LIMIT
from launcher.protocol.messages import ReadResults, Results

LINE_BUDGET = RESULT_LIMIT
"""Bytes of pickles per answer (about 4/3 of that in base64): one answer line stays below
the launching side's 16 MiB line limit, whatever the number of ranks."""


def read_results(request: ReadResults) -> Results:
    found, more = RunDir.of(request.job).read_results(set(request.skip), LINE_BUDGET)
    return Results(
        values={str(rank): base64.b64encode(data).decode("ascii") for rank, data in found.items()}, more=more
    )
