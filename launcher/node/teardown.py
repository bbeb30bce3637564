"""One failure tears down all: the supervisors of a job's nodes watch each other.

Without this, when torchrun fails on one node the others hang at their next collective,
or wait minutes in torch elastic's exit barrier. The supervisor on node 0 serves a tiny
line protocol on a free port picked at launch, on the address the other nodes reach it at;
the others connect to it. Every connection first authenticates both ends with the job's
secret (``Teardown.secret``), fresh nonces on each side (hex, 16 bytes) and HMAC-SHA256:

    node 0 -> node i   ``challenge <n0>``           at once, on every connection
    node i -> node 0   ``hello <i> <ni> <mac_i>``   mac_i = HMAC(secret, "hello|<i>|<n0>|<ni>")
    node 0 -> node i   ``proof <mac_0>``            mac_0 = HMAC(secret, "node0 hello|<i>|<n0>|<ni>")

Then the job's lines:

    node i -> node 0   ``beat``         every ``interval``: I am alive
    node i -> node 0   ``failed <i>``   my torchrun failed and will not restart
    node i -> node 0   ``bye``          I ended well: my closed connection is no alarm
    node 0 -> all      ``beat``         every ``interval``: node 0 is alive
    node 0 -> all      ``stop <i>``     node i failed: stop your torchrun
    node 0 -> all      ``lost <i> <t>`` node i was last heard at epoch t: stop
    node 0 -> all      ``done``         node 0 ended well: a closed connection is no alarm

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
import errno
import hashlib
import hmac
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

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
_MAX_LINE = 256
"""A handshake line is under 120 bytes: a longer one is garbage."""
_NONCE = re.compile(r"[0-9a-f]{32}")
_MAC = re.compile(r"[0-9a-f]{64}")
_NODE = re.compile(r"[0-9]{1,9}")

Kind = Literal["hello", "alive"]


def connect_within(timeout: float) -> float:
    return _CONNECT_FOR_S if _CONNECT_FOR_S is not None else 2 * timeout


def beat_interval(timeout: float) -> float:
    """Ten beats per limit: a few late beats (a busy node) are no loss, and a cut that heals
    is noticed within a beat or two (1.5 s at the default 15 s limit)."""
    return max(min(timeout / 10, 3.0), 0.05)


class _Refused(Exception):
    """A peer failed the handshake; the message says how, in a few words."""


class _Silent(_Refused):
    """A peer said nothing whole within the handshake's time."""


class _Reader:
    """A connection's incoming lines through one buffer: the handshake's, each bounded in
    length and time, then the job's, until the connection closes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def line(self, deadline: float) -> str:
        """The next line, whole by ``deadline`` (``time.monotonic()``); else _Silent (nothing
        came), or _Refused (a line cut short, too long, or the connection closed)."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise _Refused("a line too long")
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Silent("silent too long") if not self._buffer else _Refused("a line cut short")
            try:
                self._sock.settimeout(left)
                chunk = self._sock.recv(_MAX_LINE)
            except TimeoutError:
                continue  # the deadline decides
            except OSError as exc:
                raise _Refused(f"connection failed: {exc.strerror or exc}") from None
            if not chunk:
                raise _Refused("closed mid-line" if self._buffer else "closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > _MAX_LINE:
            raise _Refused("a line too long")
        return line.decode("utf-8", errors="replace").strip()

    def rest(self) -> Iterator[str]:
        """Every further line until the connection closes (a last line cut short is dropped)."""
        with contextlib.suppress(OSError):
            self._sock.settimeout(None)
        while True:
            while b"\n" in self._buffer:
                line, _, self._buffer = self._buffer.partition(b"\n")
                yield line.decode("utf-8", errors="replace").strip()
            try:
                chunk = self._sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            self._buffer += chunk


def _mac(secret: str, role: str, node: int, node0_nonce: str, node_nonce: str) -> str:
    """HMAC-SHA256 of ``role|node|node0_nonce|node_nonce`` under the job's secret, in hex. The
    role (``hello``, ``alive``, ``node0 hello``, ``node0 alive``) keeps a mac of one side from
    serving as the other's."""
    message = f"{role}|{node}|{node0_nonce}|{node_nonce}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _prove_to_node_0(sock: socket.socket, reader: _Reader, secret: str, kind: Kind, node: int, within: float) -> None:
    """Node i's half of the handshake: answer node 0's challenge, check node 0's proof."""
    deadline = time.monotonic() + within
    word, _, node0_nonce = reader.line(deadline).partition(" ")
    if word != "challenge" or not _NONCE.fullmatch(node0_nonce):
        raise _Refused("no challenge of a teardown watcher")
    nonce = secrets.token_hex(16)
    try:
        sock.sendall(f"{kind} {node} {nonce} {_mac(secret, kind, node, node0_nonce, nonce)}\n".encode())
    except OSError as exc:
        raise _Refused(f"connection failed: {exc.strerror or exc}") from None
    word, _, proof = reader.line(deadline).partition(" ")
    if word != "proof" or not _same(proof, _mac(secret, f"node0 {kind}", node, node0_nonce, nonce)):
        raise _Refused("no proof of the job's secret")
    with contextlib.suppress(OSError):  # closed meanwhile: the next read says so
        sock.settimeout(None)


def _check_node(sock: socket.socket, reader: _Reader, secret: str, within: float) -> tuple[Kind, int]:
    """Node 0's half of the handshake: challenge, check the answer, prove the secret back.
    Which kind of connection it is (``hello``, ``alive``) and the node's index."""
    deadline = time.monotonic() + within
    nonce = secrets.token_hex(16)
    try:
        sock.sendall(f"challenge {nonce}\n".encode())
    except OSError as exc:
        raise _Refused(f"connection failed: {exc.strerror or exc}") from None
    parts = reader.line(deadline).split(" ")
    if len(parts) != 4 or not (_NODE.fullmatch(parts[1]) and _NONCE.fullmatch(parts[2])):
        raise _Refused("not a teardown handshake")
    kind, node_text, node_nonce, given = parts
    if kind not in ("hello", "alive"):
        raise _Refused("not a teardown handshake")
    node = int(node_text)
    checked: Kind = "hello" if kind == "hello" else "alive"
    if not _same(given, _mac(secret, checked, node, nonce, node_nonce)):
        raise _Refused("wrong proof of the job's secret")
    try:
        sock.sendall(f"proof {_mac(secret, f'node0 {checked}', node, nonce, node_nonce)}\n".encode())
    except OSError as exc:
        raise _Refused(f"connection failed: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # closed meanwhile: the next read says so
        sock.settimeout(None)
    return checked, node


class _Peer:
    def __init__(self, sock: socket.socket, node: int) -> None:
        self.sock = sock
        self.node = node
        self.heard = time.time()
        self.said_bye = False


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
        self._server = _listening_socket(address, port, max(nodes, 128), on_problem)
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    def report_failure(self) -> None:
        self._stop(0, f"stop {0}\n")

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            peers, self._peers = self._peers, []
            pending = list(self._pending)
        self._ended.set()
        for peer in peers:
            _send(peer.sock, "done\n")
            _close(peer.sock)
        for sock in pending:
            _close(sock)
        with contextlib.suppress(OSError):
            self._server.close()

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
                _close(sock)
                continue
            threading.Thread(target=self._serve, args=(sock, where), daemon=True).start()

    def _serve(self, sock: socket.socket, where: object) -> None:
        """One connection: its handshake, then a node's lines or a probe's answer."""
        reader = _Reader(sock)
        try:
            kind, node = _check_node(sock, reader, self._secret, AUTH_WITHIN_S)
        except _Refused as exc:
            with self._lock:
                finished = self._finished
            if not finished:  # not closed by finish() in the middle of it
                self._refuse(where, str(exc))
            _close(sock)
            return
        finally:
            with self._lock:
                self._pending.discard(sock)
        if kind == "alive":  # a probe: the node's own connection is stalled
            self._heard_from(node)
            _close(sock)
            return
        peer = _Peer(sock, node)
        with self._lock:
            late_stop, finished = self._stopped_by, self._finished
            if not finished:
                self._peers.append(peer)
                self._expected.discard(node)
                self._last_hello = peer.heard
        if finished:  # authenticated while finish() ran: it must hear "done" too
            _send(sock, "done\n")
            _close(sock)
            return
        if late_stop is not None:
            _send(sock, late_stop)
        self._listen(peer, reader)

    def _refuse(self, where: object, why: str) -> None:
        """Note a refused connection in the job's log: once each, up to ``_NOTED_REFUSALS``."""
        with self._lock:
            self._refusals += 1
            count = self._refusals
        if count <= _NOTED_REFUSALS:
            self._on_problem(f"teardown watcher refused a connection from {_peer_name(where)}: {why}")
        if count == _NOTED_REFUSALS:
            self._on_problem("teardown watcher: further refused connections are not noted")

    def _listen(self, peer: _Peer, reader: _Reader) -> None:
        for line in reader.rest():
            peer.heard = time.time()
            kind = line.partition(" ")[0]
            if kind == "failed":  # the node it authenticated as, whatever index the line names
                self._stop(peer.node, f"stop {peer.node}\n")
            elif kind == "bye":
                peer.said_bye = True
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
                _send(peer.sock, "beat\n")
                if now - peer.heard > self._timeout:
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
        secret: str,
        on_stop: OnStop,
        on_problem: OnProblem,
        on_lost: OnLost | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not secret:
            raise ValueError("the teardown watcher needs the job's secret")
        self._address = (address, port)
        self._node = node
        self._secret = secret
        self._on_stop = on_stop
        self._on_lost = on_lost or (lambda node, heard: on_stop(node))
        self._on_problem = on_problem
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._closing = False
        self._stopped = False
        self._server_done = False
        self._refused_noted = False
        self._ended = threading.Event()
        self._probing = threading.Event()
        self._heard = time.time()
        self._connected = threading.Event()
        """Set once node 0 proved the secret (and this node did)."""
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
            if self._connected.is_set():  # not in the middle of the handshake
                self._say("bye\n")
            _close(self._sock)

    def _say(self, line: str) -> None:
        with self._send_lock:
            if self._sock is not None:
                _send(self._sock, line)

    def _run(self) -> None:
        reader = self._connect()
        if reader is None:
            return
        self._heard = time.time()
        self._connected.set()
        threading.Thread(target=self._beat, daemon=True).start()
        done = False
        for line in reader.rest():
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

    def _connect(self) -> _Reader | None:
        """A connection to node 0, both ends authenticated; None when there is none to watch
        (this node finished, or node 0 is lost: unreachable, refused, or silent)."""
        began = time.time()
        deadline = time.monotonic() + connect_within(self._timeout)
        while not self._closing:
            try:
                sock = socket.create_connection(self._address, timeout=min(5.0, connect_within(self._timeout) / 2))
            except OSError as exc:
                failure = f"{exc.strerror or exc}"
            else:
                self._sock, reader, connected = sock, _Reader(sock), time.time()
                try:
                    # Silence for a whole limit is node 0's silence, as on the connection after.
                    _prove_to_node_0(sock, reader, self._secret, "hello", self._node, self._timeout)
                except _Silent:
                    _close(sock)
                    if not self._closing:
                        self._on_problem(f"teardown watcher: node 0 at {self._address} said nothing when connected")
                        self._stop(0, connected)
                    return None
                except _Refused as exc:
                    _close(sock)
                    if self._closing:
                        return None
                    failure = f"handshake failed: {exc}"
                    self._note_refused(str(exc))
                else:
                    if self._closing:
                        _close(sock)
                        return None
                    with contextlib.suppress(OSError):  # closed by finish(): the read ends at once
                        _keep_alive(sock)
                    return reader
            if time.monotonic() > deadline:
                self._on_problem(f"teardown watcher cannot reach node 0 at {self._address}: {failure}")
                self._stop(0, began)
                return None
            time.sleep(0.5)
        return None

    def _note_refused(self, why: str) -> None:
        """The first handshake with "node 0" that failed, in the job's log (it may be a
        stranger's port, or node 0 refused this node as too slow: the next try tells)."""
        if not self._refused_noted:
            self._refused_noted = True
            self._on_problem(f"teardown watcher: handshake with node 0 at {self._address} failed: {why}")

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
        """One new connection to node 0: its handshake, with ``alive``, is each side's proof of
        life. The connect gets one beat (the next probe's SYN is the fresh one that a healed
        link lets through at once); a connection made may take longer to authenticate."""
        try:
            with socket.create_connection(self._address, timeout=interval) as sock:
                within = max(interval, PROBE_WITHIN_S)
                _prove_to_node_0(sock, _Reader(sock), self._secret, "alive", self._node, within)
                self._heard = time.time()
        except _Silent:
            pass  # still cut off: the next beat probes again
        except _Refused as exc:
            self._note_refused(str(exc))
        except OSError:
            pass
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


def _listening_socket(address: str, port: int, backlog: int, on_problem: OnProblem) -> socket.socket:
    """Node 0's listening socket: on ``address``, where the other nodes reach it, when that is
    an address of this host; else, noted, on every interface (the address of a NAT in front
    of the host, or a name that does not resolve here). A port taken raises OSError."""
    try:
        found = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        why = f"cannot be resolved here ({exc.strerror or exc})"
    else:
        why = "none of this host's"
        for family, _, _, _, sockaddr in found:
            try:
                return socket.create_server(sockaddr, family=family, backlog=backlog)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
    on_problem(f"teardown watcher: node 0's address {address} is {why}: listening on every interface")
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    return socket.create_server(("", port), family=family, backlog=backlog, dualstack_ipv6=family == socket.AF_INET6)


def _peer_name(where: object) -> str:
    if isinstance(where, tuple) and len(where) >= 2:
        host, port = where[0], where[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(where)


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
