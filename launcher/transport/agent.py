"""Reaching the nodes: asyncssh connections and the node agent spoken to over them.

One SSH connection per host carries one agent process for the whole operation, started
through ``node_side.py``'s bootstrap (which sends the node side where the host lacks it);
it speaks ``launcher.protocol``. ``localhost`` needs no SSH: its
agent is a local subprocess speaking the same protocol.

This module is the one place a remote command line is turned into a string.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from launcher._version import __version__
from launcher.errors import (
    REFUSALS,
    AgentError,
    AuthenticationError,
    ConnectionLostError,
    HostError,
    HostKeyError,
    NodeRefusedError,
    UnreachableError,
    VersionMismatchError,
)
from launcher.hosts.files import Host
from launcher.protocol.base import JOB_MARKER, PROTOCOL_VERSION, Request
from launcher.protocol.codec import ProtocolError, decode
from launcher.protocol.logs import LogBatch
from launcher.protocol.messages import Hello
from launcher.protocol.registry import ANSWERS, encode_request
from launcher.transport.answers import Answers
from launcher.transport.connect import Dial, HostKeyChangedError, open_connection
from launcher.transport.node_side import agent_argv, arrive
from launcher.transport.ssh_library import asyncssh_module

T = TypeVar("T")
A = TypeVar("A")

_STREAM_LIMIT = 1 << 24


@dataclass(frozen=True)
class SshOptions:
    """How to reach the hosts."""

    connect_timeout: float = 10.0
    """Seconds for the TCP connection to a host: a host that does not answer is dead."""
    patience: float = 600.0
    """Seconds a live host (its connection up, its agent running) is waited for: the SSH
    handshake, the agent's start, each answer. Keepalives notice a host that dies meanwhile."""
    max_parallel: int = 128
    """SSH handshakes in flight at once. Each host's sshd sees one connection per command
    anyway: it bounds a ProxyCommand bastion's MaxStartups, not the total CPU or files."""
    retries: int = 1
    """Extra tries, with backoff, after a transient failure (timeout, connection reset)."""
    python: str = sys.executable
    """The interpreter that runs the node agent on every host."""
    keepalive: float | None = None
    """Seconds between SSH keepalives; three unanswered ones drop the connection. None:
    as ~/.ssh/config says (ServerAliveInterval), else off. Followers set it, to notice a
    host cut from the network and reconnect."""


DEFAULT_SSH = SshOptions()
"""The options of a caller that gives none (``job_status(record)``, ``kill_job(record)``...)."""


class NodeAgent:
    """The agent on one host: ``await agent.call(Status(job))`` returns its ``NodeStatus``."""

    def __init__(
        self,
        host: Host,
        reader: Any,
        writer: Any,
        closer: Callable[[], Awaitable[None]],
        explain: Callable[[], Awaitable[str]],
    ) -> None:
        self.host = host
        self.hello: Hello | None = None
        """The node's greeting, once ``greeting()`` read it."""
        self.node_side: str | None = None
        """How the node side came: ``installed``, ``cached`` or ``sent`` (``node_side.py``)."""
        self.local_address: str | None = None
        """This machine's address on the SSH connection (None for a local agent)."""
        self._reader = reader
        self._writer = writer
        self._closer = closer
        self._explain = explain
        self._sending = asyncio.Lock()
        self._answers = Answers(self._receive)
        self.patience = 0.0
        """The least a call waits (``SshOptions.patience``): a remote node may be slow, not
        dead; its connection's keepalives and the agent's end tell dead from slow."""

    async def call(self, request: Request[A], timeout: float | None = 60.0) -> A:
        """One request, one answer; a refusal or a lost agent raises a HostError.
        ``timeout`` None: wait as long as the node takes (``Wait``). Calls made together
        are all in flight at once, their answers matched to them in order (``answers.py``)."""
        timeout = None if timeout is None else max(timeout, self.patience)
        async with self._sending:
            expected = self._answers.expect()  # before the write: the answer may come as it drains
            try:
                await self._send(request)
            except BaseException:
                expected.cancel()  # its answer, if one comes, is dropped
                raise
        try:
            answer = await self._answers.wait(expected, timeout)
        except TimeoutError:
            raise AgentError(self.host.label, f"no answer to {request.op} within {timeout:g} s") from None
        answer_type: type[A] = ANSWERS[type(request)]
        return self._checked(answer, answer_type, request.op)

    async def greeting(self, timeout: float) -> Hello:
        """The agent's first line, sent unasked; refuses a node with another launcher version."""
        async with self._answers.reading:
            try:
                raw = await asyncio.wait_for(self._receive(), timeout)
            except TimeoutError:
                raise AgentError(self.host.label, f"the node agent did not start within {timeout:g} s") from None
        # Checked before the rest: an older node's greeting has another shape.
        version, protocol = raw.get("version"), raw.get("protocol", 1)
        if version != __version__ or protocol != PROTOCOL_VERSION:
            raise VersionMismatchError(self.host.label, str(version), __version__, protocol, PROTOCOL_VERSION)
        self.hello = self._checked(raw, Hello, "the greeting")
        return self.hello

    async def receive(self, timeout: float) -> dict[str, Any]:
        """One line, as JSON (the bootstrap's, before the greeting)."""
        try:
            return await asyncio.wait_for(self._receive(), timeout)
        except TimeoutError:
            raise AgentError(self.host.label, f"the node agent did not start within {timeout:g} s") from None

    async def send_bytes(self, data: bytes) -> None:
        """Raw bytes on the agent's stdin (the node side's archive, to the bootstrap)."""
        try:
            self._writer.write(data)
            await self._writer.drain()
        except _connection_errors() as exc:
            raise ConnectionLostError(self.host.label, f"connection lost: {exc}") from None

    async def stream(self, request: Request[A]) -> AsyncIterator[LogBatch | A]:
        """A request answered by many ``LogBatch`` messages, then its answer; the calls
        already in flight are answered first, and none is sent until the stream ends."""
        async with self._sending, self._answers.reading:
            await self._answers.drain()
            try:
                await self._send(request)
                while "ok" not in (message := await self._receive()):
                    yield self._checked({**message, "ok": True}, LogBatch, request.op)
            except BaseException:
                self._answers.left_stream()  # left before its answer: the rest is dropped
                raise
            yield self._checked(message, ANSWERS[type(request)], request.op)

    async def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()
        await self._closer()

    async def _send(self, request: Request[Any]) -> None:
        try:
            self._writer.write(encode_request(request).encode())
            await self._writer.drain()
        except _connection_errors() as exc:
            raise ConnectionLostError(self.host.label, f"connection lost: {exc}") from None

    async def _receive(self) -> dict[str, Any]:
        try:
            line = await self._reader.readline()
        except _connection_errors() as exc:
            raise ConnectionLostError(self.host.label, f"connection lost: {exc}") from None
        if not line:
            raise AgentError(self.host.label, await self._explain())
        try:
            message = json.loads(line)
        except ValueError:
            raise AgentError(self.host.label, f"the node agent said something unexpected: {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise AgentError(self.host.label, f"the node agent said something unexpected: {line[:200]!r}")
        return message

    def _checked(self, raw: dict[str, Any], cls: type[T], what: str) -> T:
        if not raw.get("ok"):
            # Read leniently: a newer node may name a kind this side does not know yet.
            kind, error = raw.get("kind"), raw.get("error")
            if not isinstance(error, str):
                raise AgentError(self.host.label, f"the node agent refused {what} without saying why")
            raise REFUSALS.get(str(kind), NodeRefusedError)(self.host.label, error)
        try:
            return decode(cls, raw)
        except ProtocolError as exc:
            raise AgentError(self.host.label, f"unexpected answer to {what}: {exc}") from None


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What a dropped connection raises (asyncssh's ConnectionLost is no OSError; writing
    to a closed transport is a RuntimeError)."""
    asyncssh = asyncssh_module()

    return (OSError, RuntimeError, asyncio.IncompleteReadError, asyncssh.Error)


async def open_agent(host: Host, options: SshOptions, gate: asyncio.Semaphore | None = None) -> NodeAgent:
    """Connect to ``host`` and start its agent; ``gate`` bounds concurrent handshakes."""
    async with gate or asyncio.Semaphore(1):
        agent = await (_open_local_agent(host, options) if host.is_local else _open_remote_agent(host, options))
    try:
        # Outside the gate: the agent's Python start is the node's work, not a handshake,
        # and its wait counts from the SSH session's start, not from the queue.
        agent.node_side = await arrive(agent, timeout=options.patience)
        await agent.greeting(timeout=options.patience)
    except BaseException:
        await agent.close()
        raise
    return agent


async def _open_local_agent(host: Host, options: SshOptions) -> NodeAgent:
    env = {k: v for k, v in os.environ.items() if k != JOB_MARKER}
    try:
        proc = await asyncio.create_subprocess_exec(
            *agent_argv(options.python),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=_STREAM_LIMIT,
        )
    except OSError as exc:
        raise AgentError(host.label, f"cannot run {options.python}: {exc.strerror}") from None

    async def closer() -> None:
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def explain() -> str:
        assert proc.stderr is not None
        stderr = (await proc.stderr.read()).decode(errors="replace")
        return _agent_failure(options.python, await proc.wait(), stderr)

    return NodeAgent(host, proc.stdout, proc.stdin, closer, explain)


async def _open_remote_agent(host: Host, options: SshOptions) -> NodeAgent:
    asyncssh = asyncssh_module()

    conn = await connect(host, options)
    # Quoting point: the remote login shell parses this line.
    command = "exec " + shlex.join(agent_argv(options.python))
    try:
        proc = await conn.create_process(command, encoding=None)
    except (asyncssh.Error, OSError) as exc:
        conn.close()
        raise AgentError(host.label, f"cannot start a remote command: {exc}") from None

    async def closer() -> None:
        conn.close()
        await conn.wait_closed()

    async def explain() -> str:
        stderr = (await proc.stderr.read()).decode(errors="replace")
        completed = await proc.wait()
        return _agent_failure(options.python, completed.exit_status, stderr)

    agent = NodeAgent(host, proc.stdout, proc.stdin, closer, explain)
    agent.patience = options.patience
    sockname = conn.get_extra_info("sockname")
    agent.local_address = str(sockname[0]) if sockname else None
    return agent


def _agent_failure(python: str, exit_status: int | None, stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if exit_status == 127:
        return f"python not found there: {python} (pass --python PATH)"
    if any("No module named launcher" in line for line in lines):
        return f"launcher is not installed for {python} there (pip install it on every node)"
    if lines:
        return f"the node agent failed: {lines[-1]}"
    return f"the node agent exited with status {exit_status}"


async def connect(host: Host, options: SshOptions) -> Any:
    """An asyncssh connection honouring ~/.ssh/config and known_hosts, with one retry
    (``connect.py``: a dead host fails by ``connect_timeout``, a slow one is waited for)."""
    asyncssh = asyncssh_module()

    transient = (TimeoutError, ConnectionResetError, asyncssh.ConnectionLost)
    dial = Dial(host.name, host.port, host.user, options.connect_timeout, options.patience, options.keepalive)
    for attempt in range(options.retries + 1):
        try:
            return await open_connection(dial)
        except transient as exc:
            if attempt == options.retries:
                raise connect_error(host.label, exc, options) from None
            await asyncio.sleep(0.5 * 2**attempt)
        except (OSError, asyncssh.Error, ValueError, HostKeyChangedError) as exc:
            raise connect_error(host.label, exc, options) from None
    raise AssertionError("unreachable")


def connect_error(host: str, exc: BaseException, options: SshOptions) -> HostError:
    """The typed error, in one line, for a connection that could not be made."""
    asyncssh = asyncssh_module()

    if isinstance(exc, HostKeyChangedError):
        return HostKeyError(
            host,
            "the host key changed (it is not the one in known_hosts): possible spoofing;"
            f" if the host was reinstalled, remove its old key with `ssh-keygen -R {shlex.quote(exc.known_as)}`",
        )
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostKeyError(
            host, "host key not trusted: it is not in known_hosts (ssh to it once, or add it with ssh-keyscan)"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return AuthenticationError(
            host, "authentication failed: permission denied (check the user name and your SSH key or agent)"
        )
    if isinstance(exc, TimeoutError):
        return UnreachableError(host, f"cannot connect: timed out after {options.connect_timeout:g} s")
    if isinstance(exc, ConnectionRefusedError):
        return UnreachableError(host, "cannot connect: connection refused (is sshd running on that port?)")
    if isinstance(exc, socket.gaierror):
        return UnreachableError(host, "cannot connect: unknown host name")
    if isinstance(exc, OSError):
        return UnreachableError(host, f"cannot connect: {exc.strerror or exc}")
    if isinstance(exc, asyncssh.ConnectionLost):
        return UnreachableError(host, f"cannot connect: {exc.reason}")
    if isinstance(exc, asyncssh.Error):
        return UnreachableError(host, f"ssh: {exc.reason}")
    return UnreachableError(host, f"ssh: {exc}")
