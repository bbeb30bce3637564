"""Many simulated hosts for the launching side: asyncssh servers answering as node agents.

``SimulatedHosts(n, home)`` starts a helper process (this file, run as a script) with one
asyncssh server per simulated host on 127.0.0.1, each on its own port with its own host
key. It writes into ``home`` what a user's ~/.ssh holds (a client key, which every server
authorizes, a config, and a known_hosts naming each server's key), so that host keys
are checked as in real use, and gives ``hosts``: one ``Host("127.0.0.1", port=...)`` each
and an empty config, or with ``aliases``, ``Host("simN")`` each and a config with one
``Host simN`` block per host (``HostName``, ``Port``), as many sites write theirs. The servers run in their own process so that the launching side's CPU, memory and
open files are its own.

Each server's exec session checks that it was asked to run the bootstrap
(``# launcher.node serve``, with this launcher's version), says ``run``, greets with a
``Hello`` of this launcher's version and ``PROTOCOL_VERSION``, and answers Prepare, Start,
Commit, Status, Kill and Wait with the protocol's own dataclasses and codec. It runs no
tmux and no process: a job is a state. ``stats()`` tells what the servers saw: per host,
connections, sessions and requests by op, and the most SSH handshakes (TCP connection to
authentication done) in flight at once across every host.

``sim_launch.measure_launch`` launches on them and measures the launching side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from launcher._version import __version__
from launcher.hosts.files import Host
from launcher.protocol.base import PROTOCOL_VERSION, Refusal
from launcher.protocol.codec import ProtocolError
from launcher.protocol.messages import (
    Commit,
    Ended,
    Hello,
    KillReport,
    NodeStatus,
    Prepare,
    Prepared,
    Probe,
    Start,
    Started,
    Status,
    Wait,
)
from launcher.protocol.messages import Kill as KillRequest
from launcher.protocol.python_env import python_version, torch_version
from launcher.protocol.registry import decode_request, encode_answer
from launcher.transport.ssh_library import asyncssh_module

BOOTSTRAP_MARK = "# launcher.node serve"
RDZV_PORT, WATCH_PORT = 29500, 29501
"""What host 0's Prepare answers: nothing listens there (no host runs anything)."""

# ---------------------------------------------------------------------------- the servers' side


class _Seen:
    """What the servers saw, in the helper process."""

    def __init__(self, hosts: int) -> None:
        self.handshaking = 0
        self.most_handshaking = 0
        self.connections = [0] * hosts
        self.sessions = [0] * hosts
        self.requests: list[Counter[str]] = [Counter() for _ in range(hosts)]

    def as_json(self) -> dict[str, Any]:
        return {
            "most_handshaking": self.most_handshaking,
            "connections": self.connections,
            "sessions": self.sessions,
            "requests": [dict(c) for c in self.requests],
        }


def _server_class(asyncssh: Any, seen: _Seen, host: int) -> Any:
    class SimServer(asyncssh.SSHServer):  # type: ignore[misc]
        """Counts a handshake from the TCP connection to the end of authentication."""

        def __init__(self) -> None:
            self.handshaking = False

        def connection_made(self, conn: Any) -> None:
            seen.connections[host] += 1
            self.handshaking = True
            seen.handshaking += 1
            seen.most_handshaking = max(seen.most_handshaking, seen.handshaking)

        def auth_completed(self) -> None:
            self._done()

        def connection_lost(self, exc: Exception | None) -> None:
            self._done()

        def _done(self) -> None:
            if self.handshaking:
                self.handshaking = False
                seen.handshaking -= 1

    return SimServer


class _Node:
    """One simulated host's agent state: jobs by name, and who waits on them."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.states: dict[str, str] = {}
        self.ended: dict[str, asyncio.Event] = {}

    def hello(self) -> Hello:
        return Hello(
            protocol=PROTOCOL_VERSION,
            version=__version__,
            hostname=f"sim{self.index}",
            address="127.0.0.1",
            python=sys.executable,
            pid=os.getpid(),
            python_version=python_version(),
            torch=torch_version(),
        )

    async def answer(self, request: Any) -> Any:
        job = getattr(request, "job", "")
        state = self.states.get(job, "unknown")
        if isinstance(request, Prepare):
            if request.want_port:
                return Prepared(run_dir=f"/sim/{job}", port=RDZV_PORT, watch_port=WATCH_PORT, candidates=["127.0.0.1"])
            port = request.probe_port or 0
            probes = [Probe(address=a, port=port, ok=True, interface="lo") for a in request.probe]
            return Prepared(run_dir=f"/sim/{job}", probes=probes)
        if isinstance(request, Start):
            if state in ("held", "running"):
                return Refusal("job_running", f"{job} is running here")
            self.states[job], self.ended[job] = "held", asyncio.Event()
            return Started(session=f"launcher-{job}", run_dir=f"/sim/{job}")
        if isinstance(request, Commit):
            if state != "held":
                return Refusal("bad_request", f"{job} is not held here")
            self.states[job] = "running"
            return Started(session=f"launcher-{job}", run_dir=f"/sim/{job}")
        if isinstance(request, Status):
            return NodeStatus(state=state if state != "held" else "running", hostname=f"sim{self.index}")  # type: ignore[arg-type]
        if isinstance(request, KillRequest):
            found = int(state in ("held", "running"))
            if found:
                self.states[job] = "killed"
                self.ended[job].set()
            before = "running" if found else state
            return KillReport(found=found, forced=0, left=[], gpu_holders=[], state_before=before)  # type: ignore[arg-type]
        if isinstance(request, Wait):
            if state in ("held", "running"):
                await self.ended[job].wait()
            return Ended(state=self.states.get(job, "unknown"))  # type: ignore[arg-type]
        return Refusal("bad_request", f"the simulated node does not answer {request.op}")


async def _agent_session(process: Any, node: _Node, seen: _Seen) -> None:
    """One exec session: the bootstrap's line, the greeting, then request -> answer."""
    seen.sessions[node.index] += 1
    argv = shlex.split(process.command or "")  # exec PYTHON -W ignore -c BOOTSTRAP VERSION DIGEST BUILD serve
    code = argv.index("-c") + 1 if "-c" in argv else len(argv)
    if (
        argv[:1] != ["exec"]
        or not argv[code:]
        or not argv[code].startswith(BOOTSTRAP_MARK)
        or argv[code + 1 : code + 2] != [__version__]
    ):
        process.stderr.write(b"sim: not the launcher's bootstrap\n")
        process.exit(127)
        return
    process.stdout.write(b'{"launcher_boot": "run", "detail": "installed"}\n')
    process.stdout.write(encode_answer(node.hello()).encode())
    while line := await process.stdin.readline():
        try:
            request = decode_request(line.decode())
        except ProtocolError as exc:
            process.stdout.write(encode_answer(Refusal("bad_request", str(exc))).encode())
            continue
        seen.requests[node.index][request.op] += 1
        process.stdout.write(encode_answer(await node.answer(request)).encode())
    process.exit(0)


async def _serve(hosts: int, authorized: str) -> None:
    asyncssh = asyncssh_module()
    seen = _Seen(hosts)
    clients = asyncssh.import_authorized_keys(authorized)
    servers, listing = [], []
    for index in range(hosts):
        key = asyncssh.generate_private_key("ssh-ed25519")
        node = _Node(index)
        server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[key],
            authorized_client_keys=clients,
            server_factory=_server_class(asyncssh, seen, index),
            process_factory=lambda p, node=node: _agent_session(p, node, seen),
            encoding=None,
            backlog=1024,
        )
        servers.append(server)
        listing.append([server.sockets[0].getsockname()[1], key.export_public_key().decode().strip()])
    print(json.dumps({"hosts": listing}), flush=True)
    commands = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while (await commands.readline()).strip() == b"stats":
        print(json.dumps(seen.as_json()), flush=True)
    for server in servers:
        server.close()


# ---------------------------------------------------------------------------- the launching side's


class SimulatedHosts:
    """The helper process and the ~/.ssh in ``home`` that reaches its servers."""

    def __init__(self, hosts: int, home: Path, aliases: bool = False) -> None:
        asyncssh = asyncssh_module()
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        client = asyncssh.generate_private_key("ssh-ed25519")
        client.write_private_key(ssh / "id_ed25519")
        client.write_public_key(ssh / "id_ed25519.pub")
        authorized = client.export_public_key().decode()
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(hosts), authorized],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = self._read_line()
            listing = json.loads(line)["hosts"]
            (ssh / "known_hosts").write_text("".join(f"[127.0.0.1]:{port} {key}\n" for port, key in listing))
            blocks = [f"Host sim{i}\n  HostName 127.0.0.1\n  Port {port}\n" for i, (port, _) in enumerate(listing)]
            (ssh / "config").write_text("".join(blocks) if aliases else "")
        except BaseException:
            self.close()
            raise
        self.hosts = tuple(
            Host(f"sim{i}") if aliases else Host("127.0.0.1", port=port) for i, (port, _) in enumerate(listing)
        )
        self.pid = self._process.pid

    def stats(self) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write("stats\n")
        self._process.stdin.flush()
        return json.loads(self._read_line())  # type: ignore[no-any-return]

    def _read_line(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulated hosts' process ended (exit status {self._process.wait()})")
        return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> SimulatedHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2]))
