"""The rendezvous seen from this node: hold its port open, probe it, name the interface.

Runs ON each node, standard library only. A launch asks the first node to listen on the
rendezvous port from its prepare until its command runs (``hold``/``release``), and every other
node to open a TCP connection to it (``probe``) before anything starts: a firewall or an
address the nodes cannot reach then fails the launch in seconds instead of leaving
torchrun waiting at its rendezvous for minutes.

The interface a node uses to reach an address is the one that owns the local address of
that connection (``getsockname`` after connect): what the kernel's routing picked, with
no ``ip route`` to run or parse. A connection that fails still has a route: a UDP socket
``connect`` asks the kernel for it without sending anything (``route_interface``).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Sequence

from launcher.protocol.messages import Probe

PROBE_TIMEOUT_S = 3.0
"""Long enough for a TCP handshake across any real network, short enough to fail fast."""
_SIOCGIFADDR = 0x8915
_MAX_CANDIDATES = 8

_held: dict[str, socket.socket] = {}
"""Listening sockets by job (or by doctor's check), open between prepare and start."""


def hold(key: str, port: int) -> int:
    """Listen on ``port`` (0: a free one) on every address; kept until ``release(key)``.

    Connections are never accepted: the kernel completes their handshake, which is all
    a probe needs, and closing the socket resets them.
    """
    release(key)
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    _held[key] = sock
    return int(sock.getsockname()[1])


def release(key: str) -> None:
    """Close what ``hold(key)`` opened, so that the job itself can listen there."""
    sock = _held.pop(key, None)
    if sock is not None:
        sock.close()


def release_all() -> None:
    """Close every port held: a supervisor forked from the agent holds none (``detach.py``)."""
    for key in list(_held):
        release(key)


def candidate_addresses(ssh_address: str | None) -> list[str]:
    """Addresses of this node that others may reach it at, the likeliest first: the one
    the launching machine reached it at, those its hostname resolves to (what torch's
    gloo assumes), then every other interface's (IPv4; loopback and link-local left out)."""
    found: list[str] = []

    def add(address: str) -> None:
        try:
            parsed = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return
        if parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified:
            return
        if address not in found:
            found.append(address)

    if ssh_address:
        add(ssh_address)
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM):
            add(str(info[4][0]))
    except OSError:
        pass
    for addresses in interface_addresses().values():
        for address in addresses:
            add(address)
    return found[:_MAX_CANDIDATES]


def interface_addresses() -> dict[str, list[str]]:
    """Each interface's IPv4 address (one ioctl per interface; no process started)."""
    found: dict[str, list[str]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on it
                continue
            found.setdefault(name, []).append(socket.inet_ntoa(answer[20:24]))
    return found


def interface_of(address: str, table: dict[str, list[str]] | None = None) -> str | None:
    """The interface that owns local ``address`` (IPv4-mapped IPv6 unwrapped)."""
    plain = address.removeprefix("::ffff:")
    for name, addresses in (interface_addresses() if table is None else table).items():
        if plain in addresses:
            return name
    return None


def route_interface(address: str) -> str | None:
    """The interface the kernel would send to ``address`` from (nothing is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((address, 9))
            local = str(sock.getsockname()[0])
    except OSError:
        return None
    return interface_of(local)


def probe(addresses: Sequence[str], port: int, timeout: float = PROBE_TIMEOUT_S) -> list[Probe]:
    """Try a TCP connection to each of ``addresses`` at ``port``, all at once.

    Returns as soon as the first address in order that can be reached is known (every
    address before it has failed), or after ``timeout``; an address not settled by then
    has timed out, and one not needed is reported as not tried (``ok`` None).
    """
    pending: dict[int, tuple[int, socket.socket]] = {}
    results: list[Probe | None] = [None] * len(addresses)
    for index, address in enumerate(addresses):
        sock, error = _start_connect(address, port)
        if sock is None:
            results[index] = Probe(address, port, ok=False, error=error)
        else:
            pending[sock.fileno()] = (index, sock)
    deadline = time.monotonic() + timeout
    try:
        while pending and not _settled(results):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _, writable, _ = select.select([], list(pending), [], left)
            for fd in writable:
                index, sock = pending.pop(fd)
                results[index] = _finish_connect(sock, addresses[index], port)
                sock.close()
    finally:
        for _, sock in pending.values():
            sock.close()
    if _settled(results):  # the ones still pending are not needed
        return [result or Probe(address, port, ok=None) for address, result in zip(addresses, results)]
    waited = f"timed out after {timeout:g} s"
    return [
        result or Probe(address, port, ok=False, error=waited, interface=route_interface(address))
        for address, result in zip(addresses, results)
    ]


def _settled(results: Iterable[Probe | None]) -> bool:
    """True once the first reachable address is known: every one before it failed."""
    for result in results:
        if result is None:
            return False
        if result.ok:
            return True
    return False


def _start_connect(address: str, port: int) -> tuple[socket.socket | None, str | None]:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:  # a name would need a lookup, which may hang: addresses only
        return None, "not an IP address"
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        code = sock.connect_ex((address, port))
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    if code in (0, errno.EINPROGRESS):
        return sock, None
    sock.close()
    return None, os.strerror(code).lower()


def _finish_connect(sock: socket.socket, address: str, port: int) -> Probe:
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code != 0:
        return Probe(address, port, ok=False, error=os.strerror(code).lower(), interface=route_interface(address))
    local = str(sock.getsockname()[0])
    return Probe(address, port, ok=True, interface=interface_of(local))
