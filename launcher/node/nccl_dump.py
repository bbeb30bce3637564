"""``launcher stack --nccl`` here: make each rank dump NCCL's flight recorder, and read the dumps.

Launch points torch at the run directory (``TORCH_NCCL_DEBUG_INFO_PIPE_FILE`` and
``TORCH_FR_DUMP_TEMP_FILE``): each NCCL rank reads a FIFO ``nccl_pipe_<rank>.pipe`` there,
and a write to it makes the rank write ``nccl_trace_rank_<rank>`` beside it (as a
collective's timeout does). A rank without NCCL has no pipe; a dump left by a timeout is
sent as it is.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import time
from collections.abc import Iterable

from launcher.node.rundir import RunDir
from launcher.protocol.stack import NCCL_PIPE_PREFIX, NCCL_TRACE_PREFIX


def dump_flight_recorders(run: RunDir, ranks: Iterable[int], timeout: float) -> tuple[dict[str, str], list[str]]:
    """``({rank: dump in base64}, [problem per rank])`` for the ranks on this node."""
    dumps: dict[str, str] = {}
    problems: list[str] = []
    asked: dict[int, float | None] = {}
    for rank in ranks:
        trace = run.path / f"{NCCL_TRACE_PREFIX}{rank}"
        before = _mtime(trace)
        why = _poke(run.path / f"{NCCL_PIPE_PREFIX}{rank}.pipe")
        if why is None:
            asked[rank] = before
        elif before is not None:
            asked[rank] = None  # no pipe to ask, but a dump is there already (a timeout's)
        else:
            problems.append(f"rank {rank}: {why}")
    deadline = time.monotonic() + timeout
    waiting = dict(asked)
    while waiting and time.monotonic() < deadline:
        for rank, before in list(waiting.items()):
            now = _mtime(run.path / f"{NCCL_TRACE_PREFIX}{rank}")
            if now is not None and (before is None or now > before) and time.time() - now > 0.2:
                del waiting[rank]  # written, and untouched for a moment: whole
        if waiting:
            time.sleep(0.1)
    for rank in asked:
        if rank in waiting:
            problems.append(f"rank {rank}: no flight-recorder dump within {timeout:g} s")
            continue
        data = (run.path / f"{NCCL_TRACE_PREFIX}{rank}").read_bytes()
        dumps[str(rank)] = base64.b64encode(data).decode("ascii")
    return dumps, problems


def _poke(pipe: os.PathLike[str]) -> str | None:
    """Write to the rank's debug pipe; why not, when it cannot be."""
    try:
        if not stat.S_ISFIFO(os.stat(pipe).st_mode):
            return "its debug pipe is not a FIFO"
        fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return "no NCCL debug pipe (the rank has no NCCL process group, or its torch has no pipe)"
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return "nobody reads its NCCL debug pipe (the rank's NCCL watchdog is gone)"
        return f"cannot open its NCCL debug pipe: {exc.strerror or exc}"
    try:
        os.write(fd, b"1\n")
    finally:
        os.close(fd)
    return None


def _mtime(path: os.PathLike[str]) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
