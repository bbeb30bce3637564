"""One failure tears down all: the supervisors of a job's nodes watch each other (node 0's side here).

Without this, when torchrun fails on one node the others hang at their next collective,
or wait minutes in torch elastic's exit barrier. The supervisor on node 0 serves a tiny
line protocol on a free port picked at launch, on the address the other nodes reach it at;
the others connect to it. Every connection first authenticates both ends with the job's
secret (``Teardown.secret``), fresh nonces on each side (hex, 16 bytes) and HMAC-SHA256:

    node 0 -> node i   ``challenge <n0>``           at once, on every connection
    node i -> node 0   ``hello <i> <ni> <mac_i>``   mac_i = HMAC(secret, "hello|<i>|<n0>|<ni>")
    node 0 -> node i   ``proof <mac_0>``            mac_0 = HMAC(secret, "node0 hello|<i>|<n0>|<ni>")

Then the job's lines:

    node i -> node 0   ``beat [<t>]``   every ``interval``: I am alive (my ranks last printed at t)
    node i -> node 0   ``stacked``      I took my ranks' stacks after ``hang`` (``hang.py``)
    node i -> node 0   ``failed <i>``   my torchrun failed and will not restart
    node i -> node 0   ``bye``          I ended well: my closed connection is no alarm
    node 0 -> all      ``beat``         every ``interval``: node 0 is alive
    node 0 -> all      ``stop <i>``     node i failed: stop your torchrun
    node 0 -> all      ``lost <i> <t>`` node i was last heard at epoch t: stop
    node 0 -> all      ``done``         node 0 ended well: a closed connection is no alarm
    node 0 -> all      ``hang <t>``     no rank printed since t (``--hang-timeout``): take your stacks

A probe is a new, short connection whose handshake says ``alive`` in place of ``hello``
(``alive <i> <ni> <mac>``, the macs over ``alive|...`` and ``node0 alive|...``); node 0's
proof is its answer, and it closes.

Node 0 counts a connection only once its ``hello`` or ``alive`` carries the right mac, within
``AUTH_WITHIN_S``: before that, nothing the peer says is read as a line of the job. A peer
without the secret (a stranger on the network writing ``hello 2``, ``failed 2``), a line
recorded on another connection (the nonces differ), garbage or silence is noted in the job's
log and closed; it is not a node, neither heard nor lost. Likewise a node counts nothing
from a "node 0" that cannot prove the secret: a forged node 0 cannot make it stop. Every
node of the job holds the same secret: the nodes trust each other, and keep out whoever does
not hold it (node 0 reads ``failed`` as the failure of the node the connection proved to
be). What this does not guard against: someone on the path between two nodes who cuts a
connection (a loss, as any cut) or injects into an authenticated TCP stream (the lines
after the handshake carry no mac).

Node 0 is the arbiter of which failure came first: only the first ``failed`` it hears is
broadcast, to the failing node too. A node whose own command failed a moment after another
node's (a rank that died of its peer's death, say a gloo connection reset) reports it, waits
briefly for node 0's ``stop``, and learns that it was stopped by the first failure, not the
cause (``WatchClient.report_failure``).

A node that says nothing for ``timeout`` seconds is lost, and so is one whose connection
closes without ``bye``/``done`` (its supervisor died). A cut that heals sooner loses
nothing: TCP keeps the connection and delivers the beats that waited. TCP's retransmission
backs off (0.2, 0.6, 1.4, 3, 6, 12 s...), so after a cut the queued beats may arrive long
after the link is back: a node that has not heard from node 0 for a beat and a half probes it on
a new connection every beat (a fresh SYN each time), and either side counts the probe's
handshake as heard. Node 0 tells the
others when a node is lost; every node watches node 0's beats, so node 0 lost stops them
too. It needs nothing from the launching machine, which may be off by then. Runs on the
nodes: standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from launcher.node.teardown_auth import (
    Reader,
    Refused,
    check_node,
    close,
    is_time,
    listening_socket,
    peer_name,
    send,
)

OnStop = Callable[[int], None]
"""Called once, with the index of the node that failed."""
OnLost = Callable[[int, float], None]
"""Called once, with the index of the node lost and when it was last heard (epoch seconds)."""
OnProblem = Callable[[str], None]
"""Told, in one line, what the job's log should say (a refused peer, node 0 unreachable)."""

_CONNECT_FOR_S: float | None = None
"""How long a node may take to connect to node 0; None: twice the heartbeat limit. The
launch commits every node's start at once, but on hundreds of busy hosts the commits
spread: node 0 counts this from the latest node's hello, not from its own start. A node
that has not connected by then (its host died, or it is cut off) is lost, not left
unwatched."""
DEFAULT_TIMEOUT_S = 15.0
AUTH_WITHIN_S = 10.0
"""How long a peer connected to node 0 gets to authenticate (a few round trips, generous
for a node busy with a launch of hundreds); then node 0 refuses it. A node whose handshake
was refused this way connects again."""
PROBE_WITHIN_S = 1.0
"""A probe's handshake, once connected, gets at least this long (more when a beat is longer)."""
_NOTED_REFUSALS = 20
"""Refused connections noted one by one in the job's log; then one line says the rest are not."""


def first_stopper(line: str | None) -> int | None:
    """The node a ``stop <i>`` line names (None for any other line, or for node 0 itself)."""
    kind, _, node = (line or "").strip().partition(" ")
    return int(node) if kind == "stop" and node.isdigit() and node != "0" else None


def connect_within(timeout: float) -> float:
    return _CONNECT_FOR_S if _CONNECT_FOR_S is not None else 2 * timeout


def beat_interval(timeout: float) -> float:
    """Ten beats per limit: a few late beats (a busy node) are no loss, and a cut that heals
    is noticed within a beat or two (1.5 s at the default 15 s limit)."""
    return max(min(timeout / 10, 3.0), 0.05)


class _Peer:
    def __init__(self, sock: socket.socket, node: int) -> None:
        self.sock = sock
        self.node = node
        self.heard = time.time()
        self.said_bye = False
        self.last_output: float | None = None
        self.stacked = False


class WatchServer:
    """Node 0's side: tells every node to stop when any node fails or goes silent."""

    def __init__(
        self,
        address: str,
        port: int,
        secret: str,
        on_stop: OnStop,
        on_problem: OnProblem,
        on_lost: OnLost | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        nodes: int = 0,
    ) -> None:
        if not secret:
            raise ValueError("the teardown watcher needs the job's secret")
        self._secret = secret
        self._on_stop = on_stop
        self._on_problem = on_problem
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
        self._pending: set[socket.socket] = set()
        """Connections still in their handshake (closed by ``finish``)."""
        self._max_pending = max(2 * nodes, 256)
        self._refusals = 0
        self._stopped_by: str | None = None
        """The line that stopped the job (``stop <i>``/``lost <i> <t>``), for late peers."""
        self._finished = False
        self._ended = threading.Event()
        # Every node connects at once when the launch commits: a backlog for all of them.
        self._server = listening_socket(address, port, max(nodes, 128), on_problem)
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def report_failure(self) -> int | None:
        """This node's command failed: stop every node. Returns the node whose failure node 0
        (this one) had heard first, when it is another: this node's failure followed it."""
        self._stop(0, "stop 0\n")
        with self._lock:
            first = self._stopped_by
        return first_stopper(first)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            peers, self._peers = self._peers, []
            pending = list(self._pending)
        self._ended.set()
        for peer in peers:
            send(peer.sock, "done\n")
            close(peer.sock)
        for sock in pending:
            close(sock)
        with contextlib.suppress(OSError):
            self._server.close()

    def peers_output(self) -> list[float]:
        """When each connected node's ranks last printed (``--hang-timeout``)."""
        with self._lock:
            return [p.last_output or self._started for p in self._peers]

    def announce_hang(self, last_output: float) -> None:
        with self._lock:
            peers = list(self._peers)
        for peer in peers:
            send(peer.sock, f"hang {last_output:.3f}\n")

    def wait_stacked(self, timeout: float) -> None:
        """Until every connected node took its stacks after ``hang``, or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(p.stacked for p in self._peers):
                    return
            time.sleep(0.1)

    def _accept(self) -> None:
        while True:
            try:
                sock, where = self._server.accept()
            except OSError:
                return  # closed by finish()
            with self._lock:
                crowded = len(self._pending) >= self._max_pending
                if not crowded:
                    self._pending.add(sock)
            if crowded:
                self._refuse(where, "too many connections in their handshake at once")
                close(sock)
                continue
            threading.Thread(target=self._serve, args=(sock, where), daemon=True).start()

    def _serve(self, sock: socket.socket, where: object) -> None:
        """One connection: its handshake, then a node's lines or a probe's answer."""
        reader = Reader(sock)
        try:
            kind, node = check_node(sock, reader, self._secret, AUTH_WITHIN_S)
        except Refused as exc:
            with self._lock:
                finished = self._finished
            if not finished:  # not closed by finish() in the middle of it
                self._refuse(where, str(exc))
            close(sock)
            return
        finally:
            with self._lock:
                self._pending.discard(sock)
        if kind == "alive":  # a probe: the node's own connection is stalled
            self._heard_from(node)
            close(sock)
            return
        peer = _Peer(sock, node)
        with self._lock:
            late_stop, finished = self._stopped_by, self._finished
            if not finished:
                self._peers.append(peer)
                self._expected.discard(node)
                self._last_hello = peer.heard
        if finished:  # authenticated while finish() ran: it must hear "done" too
            send(sock, "done\n")
            close(sock)
            return
        if late_stop is not None:
            send(sock, late_stop)
        self._listen(peer, reader)

    def _refuse(self, where: object, why: str) -> None:
        """Note a refused connection in the job's log: once each, up to ``_NOTED_REFUSALS``."""
        with self._lock:
            self._refusals += 1
            count = self._refusals
        if count <= _NOTED_REFUSALS:
            self._on_problem(f"teardown watcher refused a connection from {peer_name(where)}: {why}")
        if count == _NOTED_REFUSALS:
            self._on_problem("teardown watcher: further refused connections are not noted")

    def _listen(self, peer: _Peer, reader: Reader) -> None:
        for line in reader.rest():
            peer.heard = time.time()
            kind = line.partition(" ")[0]
            if kind == "failed":  # the node it authenticated as, whatever index the line names
                self._stop(peer.node, f"stop {peer.node}\n")
            elif kind == "bye":
                peer.said_bye = True
            elif kind == "beat" and is_time(line[5:]):
                peer.last_output = float(line[5:])
            elif kind == "stacked":
                peer.stacked = True
        with self._lock:
            if peer not in self._peers:
                return  # finish() or a loss took it
            self._peers.remove(peer)
        if not peer.said_bye:  # its supervisor died without a word
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
                send(peer.sock, "beat\n")
                if now - peer.heard > self._timeout:
                    with self._lock:
                        if peer in self._peers:
                            self._peers.remove(peer)
                    close(peer.sock)
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
            send(peer.sock, line)
        if notify and node != 0:
            self._on_stop(node)
        return True
