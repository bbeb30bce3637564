"""The teardown watchers' handshake: each end proves the job's secret before a line counts.

The lines and the macs are described in ``teardown.py``; here the reader of a connection's
lines, the two halves of the handshake (``prove_to_node_0`` on node i, ``check_node`` on
node 0) and the socket helpers both watchers use. Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Literal

MAX_LINE = 256
"""A handshake line is under 120 bytes: a longer one is garbage."""
NONCE = re.compile(r"[0-9a-f]{32}")
MAC = re.compile(r"[0-9a-f]{64}")
NODE = re.compile(r"[0-9]{1,9}")

Kind = Literal["hello", "alive"]


class Refused(Exception):
    """A peer failed the handshake; the message says how, in a few words."""


class Silent(Refused):
    """A peer said nothing whole within the handshake's time."""


class Reader:
    """A connection's incoming lines through one buffer: the handshake's, each bounded in
    length and time, then the job's, until the connection closes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def line(self, deadline: float) -> str:
        """The next line, whole by ``deadline`` (``time.monotonic()``); else Silent (nothing
        came), or Refused (a line cut short, too long, or the connection closed)."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise Refused("a line too long")
            left = deadline - time.monotonic()
            if left <= 0:
                raise Silent("silent too long") if not self._buffer else Refused("a line cut short")
            try:
                self._sock.settimeout(left)
                chunk = self._sock.recv(MAX_LINE)
            except socket.timeout:  # TimeoutError from Python 3.10 on, an OSError before
                continue  # the deadline decides
            except OSError as exc:
                raise Refused(f"connection failed: {exc.strerror or exc}") from None
            if not chunk:
                raise Refused("closed mid-line" if self._buffer else "closed")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        if len(line) > MAX_LINE:
            raise Refused("a line too long")
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


def mac(secret: str, role: str, node: int, node0_nonce: str, node_nonce: str) -> str:
    """HMAC-SHA256 of ``role|node|node0_nonce|node_nonce`` under the job's secret, in hex. The
    role (``hello``, ``alive``, ``node0 hello``, ``node0 alive``) keeps a mac of one side from
    serving as the other's."""
    message = f"{role}|{node}|{node0_nonce}|{node_nonce}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def prove_to_node_0(sock: socket.socket, reader: Reader, secret: str, kind: Kind, node: int, within: float) -> None:
    """Node i's half of the handshake: answer node 0's challenge, check node 0's proof."""
    deadline = time.monotonic() + within
    word, _, node0_nonce = reader.line(deadline).partition(" ")
    if word != "challenge" or not NONCE.fullmatch(node0_nonce):
        raise Refused("no challenge of a teardown watcher")
    nonce = secrets.token_hex(16)
    try:
        sock.sendall(f"{kind} {node} {nonce} {mac(secret, kind, node, node0_nonce, nonce)}\n".encode())
    except OSError as exc:
        raise Refused(f"connection failed: {exc.strerror or exc}") from None
    word, _, proof = reader.line(deadline).partition(" ")
    if word != "proof" or not same(proof, mac(secret, f"node0 {kind}", node, node0_nonce, nonce)):
        raise Refused("no proof of the job's secret")
    with contextlib.suppress(OSError):  # closed meanwhile: the next read says so
        sock.settimeout(None)


def check_node(sock: socket.socket, reader: Reader, secret: str, within: float) -> tuple[Kind, int]:
    """Node 0's half of the handshake: challenge, check the answer, prove the secret back.
    Which kind of connection it is (``hello``, ``alive``) and the node's index."""
    deadline = time.monotonic() + within
    nonce = secrets.token_hex(16)
    try:
        sock.sendall(f"challenge {nonce}\n".encode())
    except OSError as exc:
        raise Refused(f"connection failed: {exc.strerror or exc}") from None
    parts = reader.line(deadline).split(" ")
    if len(parts) != 4 or not (NODE.fullmatch(parts[1]) and NONCE.fullmatch(parts[2])):
        raise Refused("not a teardown handshake")
    kind, node_text, node_nonce, given = parts
    if kind not in ("hello", "alive"):
        raise Refused("not a teardown handshake")
    node = int(node_text)
    checked: Kind = "hello" if kind == "hello" else "alive"
    if not same(given, mac(secret, checked, node, nonce, node_nonce)):
        raise Refused("wrong proof of the job's secret")
    try:
        sock.sendall(f"proof {mac(secret, f'node0 {checked}', node, nonce, node_nonce)}\n".encode())
    except OSError as exc:
        raise Refused(f"connection failed: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # closed meanwhile: the next read says so
        sock.settimeout(None)
    return checked, node


def listening_socket(address: str, port: int, backlog: int, on_problem: Callable[[str], None]) -> socket.socket:
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


def peer_name(where: object) -> str:
    if isinstance(where, tuple) and len(where) >= 2:
        host, port = where[0], where[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(where)


def is_time(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def close(sock: socket.socket) -> None:
    """Shut down, then close: a thread blocked reading the socket wakes up and ends."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def keep_alive(sock: socket.socket) -> None:
    """Notice within about a minute that node 0's host is gone, even between beats."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def send(sock: socket.socket, message: str) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(message.encode())
