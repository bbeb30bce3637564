"""The node agent's loop: greet, then answer one request per line until stdin closes.

The launching machine starts one agent per host over SSH (or as a local process for
``localhost``) and speaks ``launcher.protocol`` to it. Each request type has one handler
in ``HANDLERS``; the modules it calls import psutil only when they need them,
so that a status or a kill starts as little Python as it can.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from launcher._version import __version__
from launcher.node import logs, processes, start, status
from launcher.node.errors import HungUp, NodeError
from launcher.protocol import python_env
from launcher.protocol.base import PROTOCOL_VERSION, Refusal, address_reached
from launcher.protocol.codec import ProtocolError
from launcher.protocol.doctor import Checkup
from launcher.protocol.logs import Follow, LogBatch, ReadLogs, Tail
from launcher.protocol.messages import Commit, Hello, Kill, KillAll, Prepare, ReadResults, Results, Start, Status, Wait
from launcher.protocol.registry import decode_request, encode_answer, encode_batch
from launcher.protocol.stack import TakeStacks
from launcher.protocol.sync import SyncAbort, SyncCommit, SyncFinish, SyncLook, SyncPlan, SyncPut, SyncVerify

Idle = logs.Idle


def hello() -> Hello:
    """Who and where this node is: the agent's first line, sent before any request.

    ``address`` is the address the launching machine reached us at (from sshd's
    ``SSH_CONNECTION``): the one the other nodes should use for the rendezvous, even
    when the hosts file names this node by an ssh-config alias.
    """
    return Hello(
        protocol=PROTOCOL_VERSION,
        version=__version__,
        hostname=socket.gethostname(),
        address=address_reached(os.environ.get("SSH_CONNECTION", "")),
        python=sys.executable,
        pid=os.getpid(),
        python_version=python_env.python_version(),
        torch=python_env.torch_version(),
    )


def _read_results(request: ReadResults) -> Results:
    from launcher.node import results  # imported only for the jobs of launcher.run that ask

    return results.read_results(request)


Handler = Callable[[Any, Callable[[LogBatch], None], Idle], Any]
"""``(request, emit, idle) -> answer``: ``emit`` sends a streamed batch, ``idle`` waits."""


def _doctor() -> Any:
    """``node/doctor.py``, imported by ``launcher doctor`` only."""
    from launcher.node import doctor

    return doctor


def _stack() -> Any:
    """``node/stack.py``, imported by ``launcher stack`` only."""
    from launcher.node import stack

    return stack


def _sync() -> Any:
    """``node/sync.py``, imported by the sync's first request: no other operation pays for it."""
    from launcher.node import sync

    return sync


HANDLERS: dict[type[Any], Handler] = {
    Prepare: lambda r, emit, idle: start.prepare(r),
    Start: lambda r, emit, idle: start.start(r),
    Commit: lambda r, emit, idle: start.commit(r),
    Status: lambda r, emit, idle: status.job_status(r.job),
    Kill: lambda r, emit, idle: processes.kill(r.job, r.grace),
    KillAll: lambda r, emit, idle: processes.kill_all(r.grace),
    ReadLogs: lambda r, emit, idle: logs.read_logs(r),
    Tail: lambda r, emit, idle: logs.tail_logs(r, emit),
    Follow: lambda r, emit, idle: logs.follow_logs(r, emit, idle),
    Wait: lambda r, emit, idle: logs.wait_ended(r, idle),
    ReadResults: lambda r, emit, idle: _read_results(r),
    SyncPlan: lambda r, emit, idle: _sync().plan(r),
    SyncLook: lambda r, emit, idle: _sync().look(r),
    SyncPut: lambda r, emit, idle: _sync().put(r),
    SyncCommit: lambda r, emit, idle: _sync().commit(r),
    SyncVerify: lambda r, emit, idle: _sync().verify(r),
    SyncFinish: lambda r, emit, idle: _sync().finish(r),
    SyncAbort: lambda r, emit, idle: _sync().abort(r),
    Checkup: lambda r, emit, idle: _doctor().checkup(r),
    TakeStacks: lambda r, emit, idle: _stack().take_stacks(r),
}


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """Answer requests, one per line, until stdin closes."""

    def answer(message: Any) -> None:
        stdout.write(encode_answer(message))
        stdout.flush()

    def emit(batch: LogBatch) -> None:
        stdout.write(encode_batch(batch))
        stdout.flush()

    idle = idle_until_hang_up(stdin)
    answer(hello())  # unasked: the launcher learns who we are without a round trip
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = decode_request(line)
            answer(HANDLERS[type(request)](request, emit, idle))
        except ProtocolError as exc:
            answer(Refusal(kind="bad_request", error=str(exc)))
        except NodeError as exc:
            answer(Refusal(kind=exc.kind, error=str(exc)))
        except (BrokenPipeError, HungUp):
            return
        except Exception as exc:  # noqa: BLE001 - the launcher shows it, naming this host
            answer(Refusal(kind="internal", error=f"{type(exc).__name__}: {exc}"))


def idle_until_hang_up(stdin: IO[str]) -> Idle:
    """An ``Idle`` that watches ``stdin`` for its end (Ctrl-C, a dropped connection).
    Without it, an agent would wait for the job's end (hours) with nobody left to answer."""
    import fcntl
    import termios

    try:
        fd = stdin.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return time.sleep

    def idle(seconds: float) -> None:
        readable, _, _ = select.select([fd], [], [], seconds)
        if not readable:
            return
        pending = bytearray(4)
        try:
            fcntl.ioctl(fd, termios.FIONREAD, pending)
        except OSError:  # not a pipe or socket: no way to tell, so keep waiting
            time.sleep(seconds)
            return
        if int.from_bytes(pending, sys.byteorder) == 0:
            raise HungUp  # readable with nothing to read: the end of the stream
        time.sleep(seconds)  # a next request waits its turn (select would return at once)

    return idle
