"""Opening SSH connections: a dead host fails fast, a slow one is waited for, a bastion is shared.

A host is dead when its TCP connection cannot be made: that, and only that, is bounded
by ``connect_timeout``. Once the TCP connection is up, the SSH handshake and the login
are waited for up to ``patience`` (on a machine whose cores are shared by hundreds of
sshd, a handshake can take longer than any timeout chosen for a quiet machine), and
keepalives then watch the connection for as long as it is used.

Hosts reached through the same ``ProxyJump`` (``~/.ssh/config``) share one SSH connection
to that bastion, opened once and closed with the last connection through it: a bastion
with sshd's default ``MaxStartups 10:30:100`` would drop handshakes beyond ten at once.
For a host behind a bastion, ``connect_timeout`` bounds the bastion's own connection to
it (the ``direct-tcpip`` channel), again not the handshake.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from typing import Any

from launcher.transport.ssh_library import asyncssh_module

DEFAULT_KEEPALIVE_S = 10.0
"""Between SSH keepalives when ~/.ssh/config sets none: three unanswered (30 s) drop a
connection whose host died after it connected."""


@dataclass(frozen=True)
class Dial:
    """How to open one connection."""

    name: str
    """As the hosts file names it: an address, a name or an ssh-config alias."""
    port: int | None = None
    user: str | None = None
    connect_timeout: float = 10.0
    """Seconds for the TCP connection (or the bastion's channel) to the host."""
    patience: float = 600.0
    """Seconds for the SSH handshake and login over a TCP connection that is up."""
    keepalive: float | None = None


async def open_connection(dial: Dial) -> Any:
    """An asyncssh connection to ``dial.name``, honouring ~/.ssh/config and known_hosts.

    Raises asyncssh's errors, ``OSError`` and ``TimeoutError`` (the TCP connection, or
    the handshake after ``patience``), and ``HostKeyChangedError``; the caller turns them
    into one-line errors.
    """
    asyncssh = asyncssh_module()

    # As asyncssh.connect builds them (``()``: "not given", so ~/.ssh/config applies). They
    # are passed on: asyncssh then reuses the parsed config instead of reading it again
    # (with one Host block per host, parsing it is most of the launching side's CPU per host).
    options = await asyncssh.SSHClientConnectionOptions.construct(
        None, config=(), host=dial.name, port=dial.port if dial.port is not None else (), tunnel=(), **_user(dial)
    )
    try:
        return await _connect(dial, options)
    except asyncssh.HostKeyNotVerifiable:
        # asyncssh raises the same error for an unknown host and for a key that changed;
        # the two call for opposite advice, so known_hosts is read again to tell them apart.
        known_as = await _known_hosts_name(options, dial.name)
        if known_as is None:
            raise
        raise HostKeyChangedError(known_as) from None


class HostKeyChangedError(Exception):
    """The host offered another key than the one known_hosts holds for it: possibly spoofed."""

    def __init__(self, known_as: str) -> None:
        self.known_as = known_as
        """The host as known_hosts names it (``ssh-keygen -R`` takes it): ``h1``, ``[h1]:2222``."""
        super().__init__(f"the host key of {known_as} changed")


async def _known_hosts_name(options: Any, written: str) -> str | None:
    """The host's name in known_hosts when known_hosts holds a key for it (by name or
    address, as asyncssh matches), else None: the host is not known at all. The name is
    the one the user wrote when known_hosts has it, so the advice reads as they know it."""
    asyncssh = asyncssh_module()

    files = options.known_hosts
    if files is None:
        return None
    paths = [os.path.expanduser(f) for f in (files or ["~/.ssh/known_hosts"])]
    readable = [path for path in paths if os.path.isfile(path) and os.access(path, os.R_OK)]
    if not readable:
        return None
    host = options.host_key_alias or options.host
    port = options.port if options.port != 22 else None
    known = asyncssh.read_known_hosts(readable)

    def holds(name: str, address: str = "") -> bool:
        keys, ca_keys, *_ = asyncssh.match_known_hosts(known, name, address, port)
        return bool(keys or ca_keys)

    try:
        infos = await asyncio.get_running_loop().getaddrinfo(options.host, options.port, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    addresses = sorted({str(info[4][0]) for info in infos})
    if not any(holds(host, address) for address in ["", *addresses]):
        return None
    for name in (written, host, *addresses):
        if holds(name):
            return name if port is None else f"[{name}]:{port}"
    return host if port is None else f"[{host}]:{port}"


async def _connect(dial: Dial, options: Any) -> Any:
    asyncssh = asyncssh_module()

    keepalive = dial.keepalive if dial.keepalive is not None else options.keepalive_interval or DEFAULT_KEEPALIVE_S
    settings: dict[str, Any] = {
        **_login(dial),
        "options": options,
        "known_hosts": known_hosts_once(options.known_hosts),
        "connect_timeout": dial.patience,
        "keepalive_interval": keepalive,
        "keepalive_count_max": 3,
    }
    if isinstance(options.tunnel, str) and options.tunnel:
        bastions, jump = _bastions(), options.tunnel
        bastion = await bastions.acquire(jump, dial)
        release = _Once(lambda: bastions.release(jump))
        try:
            return await asyncssh.connect(
                dial.name,
                tunnel=_TimedTunnel(bastion, dial.connect_timeout),
                client_factory=_releasing(release),
                **settings,
            )
        except BaseException:
            release()
            raise
    if options.tunnel or options.proxy_command:
        # A tunnel asyncssh opens itself (ProxyCommand): the whole of it within patience.
        return await asyncssh.connect(dial.name, **settings)
    sock = await _tcp(options.host, options.port, dial.connect_timeout)
    try:
        return await asyncssh.connect(dial.name, sock=sock, **settings)
    except BaseException:
        sock.close()
        raise


_KNOWN_HOSTS: dict[tuple[tuple[str, int, int], ...], Any] = {}


def known_hosts_once(files: Any) -> Any:
    """known_hosts, as asyncssh would read it for this connection, parsed once for every
    connection of a command (again if a file changed): asyncssh given paths reads and
    decodes every key of every file at each connection, which at 1,000 hosts was two thirds
    of the launching side's CPU (it grows with the hosts squared). The keys are checked
    all the same: asyncssh matches the host against the parsed file as against the paths.

    ``files``: the connection's option; None (no checking, asked for) and an object are
    kept as they are, and so is a file that cannot be read (asyncssh then says so)."""
    if files is None or not isinstance(files, (str, list, tuple)):
        return files
    paths = [os.path.expanduser(f) for f in ([files] if isinstance(files, str) else files or ["~/.ssh/known_hosts"])]
    try:
        stamps = tuple((path, os.stat(path).st_mtime_ns, os.stat(path).st_size) for path in paths)
        if not all(os.access(path, os.R_OK) for path in paths):
            return files
        parsed = _KNOWN_HOSTS.get(stamps)
        if parsed is None:
            if len(_KNOWN_HOSTS) > 16:
                _KNOWN_HOSTS.clear()
            parsed = _KNOWN_HOSTS[stamps] = asyncssh_module().read_known_hosts(paths)
    except (OSError, ValueError):
        return files
    return parsed


def _user(dial: Dial) -> dict[str, Any]:
    return {} if dial.user is None else {"username": dial.user}


def _login(dial: Dial) -> dict[str, Any]:
    login: dict[str, Any] = {}
    if dial.port is not None:
        login["port"] = dial.port
    if dial.user is not None:
        login["username"] = dial.user
    return login


async def _tcp(host: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket, or TimeoutError after ``timeout`` (a dead or cut-off host)."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for family, kind, proto, _, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError) or isinstance(exc, TimeoutError):
                raise
            last = exc
            continue
        return sock
    raise last or OSError(f"no address for {host}")


class _TimedTunnel:
    """A bastion connection whose channels to hosts open within ``timeout`` (asyncssh's
    tunnel protocol: ``create_connection``), so that a dead host behind it fails fast."""

    def __init__(self, bastion: Any, timeout: float) -> None:
        self._bastion = bastion
        self._timeout = timeout

    async def create_connection(self, session_factory: Any, host: str, port: int) -> Any:
        return await asyncio.wait_for(self._bastion.create_connection(session_factory, host, port), self._timeout)


class _Once:
    def __init__(self, action: Any) -> None:
        self._action: Any = action

    def __call__(self) -> None:
        action, self._action = self._action, None
        if action is not None:
            action()


def _releasing(release: _Once) -> Any:
    """An asyncssh client factory whose connection gives its bastion back when it ends."""
    base: Any = asyncssh_module().SSHClient

    class Client(base):  # type: ignore[misc]
        def connection_lost(self, exc: Exception | None) -> None:
            release()

    return Client


class _Bastions:
    """One SSH connection per ProxyJump of this event loop, counted by its users."""

    def __init__(self) -> None:
        self._connections: dict[str, asyncio.Future[Any]] = {}
        self._users: dict[str, int] = {}

    async def acquire(self, jump: str, dial: Dial) -> Any:
        self._users[jump] = self._users.get(jump, 0) + 1
        opening = self._connections.get(jump)
        if opening is None:
            opening = asyncio.ensure_future(_open_bastion(jump, dial))
            self._connections[jump] = opening
        try:
            return await asyncio.shield(opening)
        except BaseException:
            if opening.done() and self._connections.get(jump) is opening:
                del self._connections[jump]  # a failed bastion is tried again by the next host
            self._users[jump] -= 1
            raise

    def release(self, jump: str) -> None:
        users = self._users.get(jump, 0) - 1
        self._users[jump] = max(users, 0)
        opening = self._connections.get(jump)
        if users <= 0 and opening is not None and opening.done() and not opening.exception():
            del self._connections[jump]
            opening.result().close()


async def _open_bastion(jump: str, dial: Dial) -> Any:
    """The connection to the last hop of ``jump`` (``[user@]host[:port]``, comma-separated
    hops: the earlier ones are asyncssh's to open), with its own TCP timeout."""
    *before, last = jump.split(",")
    user, _, rest = last.rpartition("@")
    name, port = rest, None
    if rest.count(":") == 1 and rest.rsplit(":", 1)[1].isdigit():
        name, port = rest.rsplit(":", 1)[0], int(rest.rsplit(":", 1)[1])
    hop = Dial(name, port, user or None, dial.connect_timeout, dial.patience, dial.keepalive)
    if before:
        asyncssh = asyncssh_module()

        return await asyncssh.connect(name, tunnel=",".join(before), connect_timeout=dial.patience, **_login(hop))
    return await open_connection(hop)


_BY_LOOP: dict[int, tuple[asyncio.AbstractEventLoop, _Bastions]] = {}


def _bastions() -> _Bastions:
    """This event loop's bastions (``asyncio.run`` makes a new loop per command)."""
    loop = asyncio.get_running_loop()
    known = _BY_LOOP.get(id(loop))
    if known is None or known[0] is not loop:
        for key in [k for k, (other, _) in _BY_LOOP.items() if other.is_closed()]:
            del _BY_LOOP[key]
        known = (loop, _Bastions())
        _BY_LOOP[id(loop)] = known
    return known[1]
