"""One failure tears down all: the supervisors of a job's nodes watch each other.

Without this, when torchrun fails on one node the others hang at their next collective,
or wait minutes in torch elastic's exit barrier. The supervisor on node 0 serves a tiny
line protocol on a free port picked at launch; the others connect to it:

    node i -> node 0   ``failed <i>``   my torchrun failed and will not restart
    node 0 -> all      ``stop <i>``     node i failed: stop your torchrun
    node 0 -> all      ``done``         node 0 ended well: a closed connection is no alarm

A connection to node 0 that breaks before ``done`` means node 0 itself is gone, and
that stops the node too. It needs nothing from the launching machine, which may be
off by then. Runs on the nodes: standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

OnStop = Callable[[int], None]
"""Called once, with the index of the node that failed."""

_CONNECT_FOR_S = 300.0
"""Node 0's supervisor may start after ours; the job may still be queueing for the rendezvous."""


class WatchServer:
    """Node 0's side: tells every node to stop when any node fails."""

    def __init__(self, port: int, on_stop: OnStop) -> None:
        self._on_stop = on_stop
        self._lock = threading.Lock()
        self._peers: list[socket.socket] = []
        self._stopped_by: int | None = None
        self._finished = False
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        self._server = socket.create_server(("", port), family=family, dualstack_ipv6=family == socket.AF_INET6)
        threading.Thread(target=self._accept, daemon=True).start()

    def report_failure(self) -> None:
        self._stop(0)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            peers, self._peers = self._peers, []
        for peer in peers:
            _send(peer, "done\n")
            _close(peer)
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self._server.accept()
            except OSError:
                return  # closed by finish()
            with self._lock:
                late_stop, finished = self._stopped_by, self._finished
                if not finished:
                    self._peers.append(peer)
            if finished:  # accepted while finish() closed the socket: it must hear "done" too
                _send(peer, "done\n")
                _close(peer)
                return
            if late_stop is not None:
                _send(peer, f"stop {late_stop}\n")
            threading.Thread(target=self._listen, args=(peer,), daemon=True).start()

    def _listen(self, peer: socket.socket) -> None:
        for line in _lines(peer):
            kind, _, node = line.partition(" ")
            if kind == "failed" and node.isdigit():
                self._stop(int(node))

    def _stop(self, node: int) -> None:
        with self._lock:
            if self._stopped_by is not None:
                return
            self._stopped_by = node
            peers = list(self._peers)
        for peer in peers:
            _send(peer, f"stop {node}\n")
        if node != 0:
            self._on_stop(node)


class WatchClient:
    """Node i's side: reports its failure, and stops when told or when node 0 vanishes."""

    def __init__(self, address: str, port: int, node: int, on_stop: OnStop, on_problem: Callable[[str], None]) -> None:
        self._address = (address, port)
        self._node = node
        self._on_stop = on_stop
        self._on_problem = on_problem
        self._sock: socket.socket | None = None
        self._closing = False
        self._connected = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def report_failure(self) -> None:
        if self._connected.wait(timeout=5) and self._sock is not None:
            _send(self._sock, f"failed {self._node}\n")
        self.finish()

    def finish(self) -> None:
        self._closing = True
        if self._sock is not None:
            _close(self._sock)

    def _run(self) -> None:
        deadline = time.monotonic() + _CONNECT_FOR_S
        while not self._closing:
            try:
                self._sock = socket.create_connection(self._address, timeout=5)
                self._sock.settimeout(None)
                _keep_alive(self._sock)
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    self._on_problem(f"teardown watcher cannot reach node 0 at {self._address}: {exc}")
                    return
                time.sleep(0.5)
        else:
            return
        self._connected.set()
        done = False
        for line in _lines(self._sock):
            kind, _, node = line.partition(" ")
            if kind == "stop" and node.isdigit():
                if int(node) != self._node and not self._closing:  # our own failure echoed back: done already
                    self._on_stop(int(node))
                return
            done = done or kind == "done"
        if not done and not self._closing:
            self._on_stop(0)  # node 0 went away without a word: its host or its supervisor died


def _close(sock: socket.socket) -> None:
    """Shut down, then close: a thread blocked reading the socket wakes up and ends."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _keep_alive(sock: socket.socket) -> None:
    """Notice within about a minute that node 0's host is gone (powered off, cut off)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def _send(sock: socket.socket, message: str) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(message.encode())


def _lines(sock: socket.socket) -> Iterator[str]:
    """Lines received until the connection closes."""
    with contextlib.suppress(OSError), sock.makefile("r", encoding="utf-8", errors="replace") as stream:
        for line in stream:
            yield line.strip()
