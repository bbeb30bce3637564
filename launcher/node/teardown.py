"""One failure tears down all: the supervisors of a job's nodes watch each other.

Without this, when torchrun fails on one node the others hang at their next collective,
or wait minutes in torch elastic's exit barrier. The supervisor on node 0 serves a tiny
line protocol on a free port picked at launch; the others connect to it:

    node i -> node 0   ``hello <i>``    first: who I am
    node i -> node 0   ``beat``         every ``interval``: I am alive
    node i -> node 0   ``failed <i>``   my torchrun failed and will not restart
    node i -> node 0   ``bye``          I ended well: my closed connection is no alarm
    node 0 -> all      ``beat``         every ``interval``: node 0 is alive
    node 0 -> all      ``stop <i>``     node i failed: stop your torchrun
    node 0 -> all      ``lost <i> <t>`` node i was last heard at epoch t: stop
    node 0 -> all      ``done``         node 0 ended well: a closed connection is no alarm
    node i -> node 0   ``alive <i>``    on a new, short connection: node 0 answers ``beat``

A node that says nothing for ``timeout`` seconds is lost, and so is one whose connection
closes without ``bye``/``done`` (its supervisor died). A cut that heals sooner loses
nothing: TCP keeps the connection and delivers the beats that waited. TCP's retransmission
backs off (0.2, 0.6, 1.4, 3, 6, 12 s...), so after a cut the queued beats may arrive long
after the link is back: a node that has not heard from node 0 for a beat and a half probes it on
a new connection every beat (a fresh SYN each time), and either side counts the probe's
``alive``/``beat`` as heard. Node 0 tells the
others when a node is lost; every node watches node 0's beats, so node 0 lost stops them
too. It needs nothing from the launching machine, which may be off by then. Runs on the
nodes: standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

OnStop = Callable[[int], None]
"""Called once, with the index of the node that failed."""
OnLost = Callable[[int, float], None]
"""Called once, with the index of the node lost and when it was last heard (epoch seconds)."""

_CONNECT_FOR_S: float | None = None
"""How long a node may take to connect to node 0; None: twice the heartbeat limit. The
launch commits every node's start at once, but on hundreds of busy hosts the commits
spread: node 0 counts this from the latest node's hello, not from its own start. A node
that has not connected by then (its host died, or it is cut off) is lost, not left
unwatched."""
DEFAULT_TIMEOUT_S = 15.0


def connect_within(timeout: float) -> float:
    return _CONNECT_FOR_S if _CONNECT_FOR_S is not None else 2 * timeout


def beat_interval(timeout: float) -> float:
    """Ten beats per limit: a few late beats (a busy node) are no loss, and a cut that heals
    is noticed within a beat or two (1.5 s at the default 15 s limit)."""
    return max(min(timeout / 10, 3.0), 0.05)


class _Peer:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.node: int | None = None
        self.heard = time.time()
        self.said_bye = False


class WatchServer:
    """Node 0's side: tells every node to stop when any node fails or goes silent."""

    def __init__(
        self,
        port: int,
        on_stop: OnStop,
        on_lost: OnLost | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        nodes: int = 0,
    ) -> None:
        self._on_stop = on_stop
        self._expected = set(range(1, nodes))
        """Nodes that have yet to say hello (0 nodes: none expected, e.g. a test's server)."""
        self._started = time.time()
        self._last_hello = self._started
        """When the latest node said hello: while nodes keep arriving, the launch is slow
        (253 hosts sharing 2 cores commit over more than a minute), not a node dead."""
        self._on_lost = on_lost or (lambda node, heard: on_stop(node))
        self._timeout = timeout
        self._lock = threading.Lock()
        self._peers: list[_Peer] = []
        self._stopped_by: str | None = None
        """The line that stopped the job (``stop <i>``/``lost <i> <t>``), for late peers."""
        self._finished = False
        self._ended = threading.Event()
        family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
        # Every node connects at once when the launch commits: a backlog for all of them.
        self._server = socket.create_server(
            ("", port), family=family, backlog=max(nodes, 128), dualstack_ipv6=family == socket.AF_INET6
        )
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def report_failure(self) -> None:
        self._stop(0, f"stop {0}\n")

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            peers, self._peers = self._peers, []
        self._ended.set()
        for peer in peers:
            _send(peer.sock, "done\n")
            _close(peer.sock)
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return  # closed by finish()
            peer = _Peer(sock)
            with self._lock:
                late_stop, finished = self._stopped_by, self._finished
                if not finished:
                    self._peers.append(peer)
            if finished:  # accepted while finish() closed the socket: it must hear "done" too
                _send(sock, "done\n")
                _close(sock)
                return
            if late_stop is not None:
                _send(sock, late_stop)
            threading.Thread(target=self._listen, args=(peer,), daemon=True).start()

    def _listen(self, peer: _Peer) -> None:
        for line in _lines(peer.sock):
            peer.heard = time.time()
            kind, _, node = line.partition(" ")
            if kind == "hello" and node.isdigit():
                peer.node = int(node)
                with self._lock:
                    self._expected.discard(peer.node)
                    self._last_hello = peer.heard
            elif kind == "failed" and node.isdigit():
                self._stop(int(node), f"stop {node}\n")
            elif kind == "bye":
                peer.said_bye = True
            elif kind == "alive" and node.isdigit():  # a probe: the node's own connection is stalled
                peer.said_bye = True  # this connection's end is no alarm
                self._heard_from(int(node))
                _send(peer.sock, "beat\n")
        with self._lock:
            if peer not in self._peers:
                return  # finish() or a loss took it
            self._peers.remove(peer)
        if not peer.said_bye and peer.node is not None:  # its supervisor died without a word
            self._lose(peer.node, peer.heard)

    def _heard_from(self, node: int) -> None:
        with self._lock:
            peers = [p for p in self._peers if p.node == node]
        for peer in peers:
            peer.heard = time.time()

    def _beat(self) -> None:
        interval = beat_interval(self._timeout)
        while not self._ended.wait(interval):
            with self._lock:
                peers = list(self._peers)
            now = time.time()
            with self._lock:
                missing = min(self._expected) if self._expected else None
                quiet = now - self._last_hello
            if missing is not None and quiet > connect_within(self._timeout):
                self._lose(missing, self._started)  # it never connected: dead or cut off
            for peer in peers:
                _send(peer.sock, "beat\n")
                if peer.node is not None and now - peer.heard > self._timeout:
                    with self._lock:
                        if peer in self._peers:
                            self._peers.remove(peer)
                    _close(peer.sock)
                    self._lose(peer.node, peer.heard)

    def _lose(self, node: int, heard: float) -> None:
        if self._stop(node, f"lost {node} {heard:.3f}\n", notify=False):
            self._on_lost(node, heard)

    def _stop(self, node: int, line: str, notify: bool = True) -> bool:
        """Tell every node; True for the first stop (only the first counts)."""
        with self._lock:
            if self._stopped_by is not None or self._finished:
                return False
            self._stopped_by = line
            peers = list(self._peers)
        for peer in peers:
            _send(peer.sock, line)
        if notify and node != 0:
            self._on_stop(node)
        return True


class WatchClient:
    """Node i's side: reports its failure and beats; stops when told or when node 0 falls silent."""

    def __init__(
        self,
        address: str,
        port: int,
        node: int,
        on_stop: OnStop,
        on_problem: Callable[[str], None],
        on_lost: OnLost | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._address = (address, port)
        self._node = node
        self._on_stop = on_stop
        self._on_lost = on_lost or (lambda node, heard: on_stop(node))
        self._on_problem = on_problem
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._closing = False
        self._stopped = False
        self._server_done = False
        self._ended = threading.Event()
        self._probing = threading.Event()
        self._heard = time.time()
        self._connected = threading.Event()
        self._send_lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def report_failure(self) -> None:
        if self._connected.wait(timeout=5) and self._sock is not None:
            self._say(f"failed {self._node}\n")
        self._closing = True
        self._ended.set()
        if self._sock is not None:
            _close(self._sock)

    def finish(self) -> None:
        self._closing = True
        self._ended.set()
        if self._sock is not None:
            self._say("bye\n")
            _close(self._sock)

    def _say(self, line: str) -> None:
        with self._send_lock:
            if self._sock is not None:
                _send(self._sock, line)

    def _run(self) -> None:
        began = time.time()
        deadline = time.monotonic() + connect_within(self._timeout)
        while not self._closing:
            try:
                sock = socket.create_connection(self._address, timeout=min(5.0, connect_within(self._timeout) / 2))
                sock.settimeout(None)
                _keep_alive(sock)
                self._sock = sock
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    self._on_problem(f"teardown watcher cannot reach node 0 at {self._address}: {exc}")
                    self._stop(0, began)
                    return
                time.sleep(0.5)
        else:
            return
        self._heard = time.time()
        self._say(f"hello {self._node}\n")
        self._connected.set()
        threading.Thread(target=self._beat, daemon=True).start()
        done = False
        for line in _lines(self._sock):
            self._heard = time.time()
            kind, _, rest = line.partition(" ")
            node, _, when = rest.partition(" ")
            if kind in ("stop", "lost") and node.isdigit():
                if int(node) != self._node and not self._closing:  # our own failure echoed back: done already
                    self._stop(int(node), float(when) if kind == "lost" and _is_time(when) else None)
                return
            if kind == "done":
                done = self._server_done = True
                self._ended.set()
        if not done and not self._closing:
            self._stop(0, self._heard)  # node 0 went away without a word: its host or its supervisor died

    def _beat(self) -> None:
        interval = beat_interval(self._timeout)
        while not self._ended.wait(interval):
            if self._closing or self._stopped or self._server_done:
                return
            self._say("beat\n")
            silent = time.time() - self._heard
            if silent > 1.5 * interval and not self._probing.is_set():
                self._probing.set()
                threading.Thread(target=self._probe, args=(interval,), daemon=True).start()
            if silent > self._timeout:
                self._stop(0, self._heard)
                if self._sock is not None:
                    _close(self._sock)
                return

    def _probe(self, interval: float) -> None:
        """One new connection to node 0: ``alive`` out, ``beat`` back (each side's proof of life)."""
        try:
            with socket.create_connection(self._address, timeout=interval) as sock:
                sock.settimeout(interval)
                sock.sendall(f"alive {self._node}\n".encode())
                if sock.recv(64).startswith(b"beat"):
                    self._heard = time.time()
        except OSError:
            pass  # still cut off: the next beat probes again
        finally:
            self._probing.clear()

    def _stop(self, node: int, lost_since: float | None) -> None:
        with self._send_lock:
            if self._stopped:
                return
            self._stopped = True
        self._ended.set()
        if lost_since is None:
            self._on_stop(node)
        else:
            self._on_lost(node, lost_since)


def _is_time(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _close(sock: socket.socket) -> None:
    """Shut down, then close: a thread blocked reading the socket wakes up and ends."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _keep_alive(sock: socket.socket) -> None:
    """Notice within about a minute that node 0's host is gone, even between beats."""
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
