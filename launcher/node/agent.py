"""The node agent's loop: greet, then answer one request per line until stdin closes.

The launching machine starts one agent per host over SSH (or as a local process for
``localhost``) and speaks ``launcher.protocol`` to it. Each request type has one handler
in ``HANDLERS``; the modules it calls import psutil only when they need them,
so that a status or a kill starts as little Python as it can.
"""

from __future__ import annotations

import importlib
import os
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from launcher._version import __version__
from launcher.node.errors import HungUp, Idle, NodeError, sleep_or_wake
from launcher.protocol import python_env
from launcher.protocol.base import PROTOCOL_VERSION, Refusal, address_reached
from launcher.protocol.codec import ProtocolError
from launcher.protocol.lines import decode_request, encode_answer, encode_batch
from launcher.protocol.messages import Hello

if TYPE_CHECKING:
    from launcher.protocol.logs import LogBatch


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


Handler = Callable[[Any, Callable[["LogBatch"], None], Idle], Any]
"""``(request, emit, idle) -> answer``: ``emit`` sends a streamed batch, ``idle`` waits."""


def _module(name: str) -> Any:
    """A handler's module of ``launcher.node``, imported by the first request it serves: an
    agent imports what its operation needs (a launch's never loads the sync or the logs)."""
    return importlib.import_module(f"launcher.node.{name}")


HANDLERS: dict[str, Handler] = {
    "prepare": lambda r, emit, idle: _module("start").prepare(r),
    "start": lambda r, emit, idle: _module("start").start(r),
    "commit": lambda r, emit, idle: _module("start").commit(r),
    "status": lambda r, emit, idle: _module("status").job_status(r.job),
    "kill": lambda r, emit, idle: _module("processes").kill(r.job, r.grace, r.forget),
    "kill_all": lambda r, emit, idle: _module("processes").kill_all(r.grace),
    "logs": lambda r, emit, idle: _module("logs").read_logs(r),
    "tail": lambda r, emit, idle: _module("logs").tail_logs(r, emit),
    "follow": lambda r, emit, idle: _module("logs").follow_logs(r, emit, idle),
    "wait": lambda r, emit, idle: _module("logs").wait_ended(r, idle),
    "results": lambda r, emit, idle: _module("results").read_results(r),
    "sync_plan": lambda r, emit, idle: _module("sync").plan(r),
    "sync_look": lambda r, emit, idle: _module("sync").look(r),
    "sync_put": lambda r, emit, idle: _module("sync").put(r),
    "sync_commit": lambda r, emit, idle: _module("sync").commit(r),
    "sync_verify": lambda r, emit, idle: _module("sync").verify(r),
    "sync_finish": lambda r, emit, idle: _module("sync").finish(r),
    "sync_abort": lambda r, emit, idle: _module("sync").abort(r),
    "checkup": lambda r, emit, idle: _module("doctor").checkup(r),
    "stack": lambda r, emit, idle: _module("stack").take_stacks(r),
}
"""op -> its handler (``protocol/lines.py``'s ``OPS`` holds the same ops)."""


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
            answer(HANDLERS[request.op](request, emit, idle))
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
        return sleep_or_wake

    def idle(seconds: float, wake: int | None = None) -> None:
        readable, _, _ = select.select([fd] if wake is None else [fd, wake], [], [], seconds)
        if fd not in readable:
            return  # the time is up, or ``wake`` woke it
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
