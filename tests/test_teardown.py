"""One failure tears down all: the watch server of node 0 and its clients, over real sockets.

Everything runs on 127.0.0.1 with a free port; each wait is bounded by ``WAIT_S`` and the
tests wait on events, not on fixed sleeps, except to show that something does NOT happen.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from launcher.node import teardown, teardown_client
from launcher.node.teardown import WatchServer
from launcher.node.teardown_client import WatchClient

SECRET = "5e" * 32
"""The job's teardown secret in these tests (a launch draws ``secrets.token_hex(32)``)."""
WAIT_S = 2.0
QUIET_S = 0.2
"""How long to watch for a call that must not come (everything is local: it would be prompt)."""


class Calls:
    """A recording callback that can be waited on."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._called = threading.Event()

    def __call__(self, value: Any) -> None:
        self.values.append(value)
        self._called.set()

    def wait(self, timeout: float = WAIT_S) -> bool:
        return self._called.wait(timeout)


class Lost(Calls):
    """``on_lost(node, last_heard)``: records ``(node, last_heard)``."""

    def __call__(self, node: int, heard: float | None = None) -> None:  # type: ignore[override]
        super().__call__((node, heard))


class Node:
    """A client with its callbacks and the thread that watches node 0 for it."""

    def __init__(
        self, client: WatchClient, thread: threading.Thread, stops: Calls, problems: Calls, lost: Lost
    ) -> None:
        self.client = client
        self.thread = thread
        self.stops = stops
        self.problems = problems
        self.lost = lost

    def connected(self) -> bool:
        return self.client._connected.wait(WAIT_S)

    def reading(self) -> None:
        """Wait until the watcher reads node 0's lines (past the handshake): its thread is in
        the reader's ``rest``."""

        def reading() -> bool:
            frame = sys._current_frames().get(self.thread.ident or 0)
            while frame is not None and frame.f_code.co_name != "rest":
                frame = frame.f_back
            return frame is not None

        assert eventually(reading), "the watcher never started reading"

    def ended(self) -> bool:
        """Its watching thread has returned (it will call nothing any more)."""
        self.thread.join(WAIT_S)
        return not self.thread.is_alive()


@pytest.fixture
def port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _OwnedThread(threading.Thread):
    """A thread that remembers whose method it runs."""

    def __init__(self, *, target: Callable[..., object] | None = None, **kwargs: Any) -> None:
        super().__init__(target=target, **kwargs)
        self.owner = getattr(target, "__self__", None)
        self.method = getattr(target, "__name__", None)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[_OwnedThread]:
    """Every thread teardown starts (so a test can join a client's watcher)."""
    threads: list[_OwnedThread] = []

    class Recorded(_OwnedThread):
        def start(self) -> None:
            threads.append(self)
            super().start()

    fake = SimpleNamespace(Thread=Recorded, Lock=threading.Lock, Event=threading.Event)
    monkeypatch.setattr(teardown, "threading", fake)
    monkeypatch.setattr(teardown_client, "threading", fake)
    return threads


@pytest.fixture
def watch(port: int, started: list[_OwnedThread]) -> Iterator[SimpleNamespace]:
    """Factories for a server and clients on ``port``; all of them finished afterwards."""
    servers: list[WatchServer] = []
    nodes: list[Node] = []

    def server(
        on_stop: Callable[[int], None],
        lost: Lost | None = None,
        timeout: float = 15.0,
        nodes: int = 0,
        notes: Calls | None = None,
    ) -> WatchServer:
        servers.append(WatchServer("127.0.0.1", port, SECRET, on_stop, notes or Calls(), lost, timeout, nodes))
        return servers[-1]

    def client(node: int, timeout: float = 15.0, secret: str = SECRET) -> Node:
        stops, problems, lost = Calls(), Calls(), Lost()
        made = WatchClient("127.0.0.1", port, node, secret, stops, problems, lost, timeout)
        (thread,) = [t for t in started if t.owner is made and t.method == "_run"]
        nodes.append(Node(made, thread, stops, problems, lost))
        return nodes[-1]

    yield SimpleNamespace(server=server, client=client)
    release(servers, nodes, port)
    joined = 0
    while joined < len(started):  # a server's accept thread starts readers until it ends
        started[joined].join(WAIT_S)
        joined += 1
    assert not [thread.name for thread in started if thread.is_alive()]


def release(servers: list[WatchServer], nodes: list[Node], port: int) -> None:
    """End every thread the test started: ``finish()`` alone leaves readers blocked (see the
    expected failures below), so the sockets are shut down as the kernel would at exit."""
    for node in nodes:
        node.client.finish()
        with contextlib.suppress(OSError, AttributeError):
            node.client._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    for server in servers:
        with contextlib.suppress(OSError):
            server._server.shutdown(socket.SHUT_RDWR)  # wakes accept() while the socket is open
        peers = list(server._peers)
        server.finish()
        # An accept() blocked on a socket closed earlier takes one more connection: give it this one.
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            pass
        for peer in [*peers, *server._peers]:
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)


def eventually(condition: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """Whether ``condition`` holds within ``timeout``, for states that no event announces."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def accepted(server: WatchServer, count: int) -> None:
    """Wait until node 0 has accepted ``count`` connections (a client counts itself
    connected as soon as the connection sits in the listening socket's backlog)."""
    assert eventually(lambda: len(server._peers) >= count), f"node 0 accepted {len(server._peers)} of {count}"


def vanish(server: WatchServer) -> None:
    """Node 0 dies: the kernel closes its sockets. ``close()`` alone would not, here: the
    server's reader threads still hold the peers' file objects open. A dead node 0 says
    nothing more: its threads here must not act on the closed sockets either."""
    server._finished = True
    server._ended.set()
    server._server.close()
    for peer in list(server._peers):  # a closed peer leaves the list
        peer.sock.shutdown(socket.SHUT_RDWR)
        peer.sock.close()


# --- the handshake, written out from the module docstring (an independent second reading) -------


def mac(role: str, node: int, node0_nonce: str, node_nonce: str, secret: str = SECRET) -> str:
    message = f"{role}|{node}|{node0_nonce}|{node_nonce}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def read_line(sock: socket.socket) -> str:
    """One line, read a byte at a time (nothing of the next line is taken)."""
    data = b""
    while not data.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        data += byte
    return data.decode()


def prove(sock: socket.socket, node: int, kind: str = "hello", secret: str = SECRET) -> list[str]:
    """Node ``node``'s half of the handshake; the lines it sent (checks node 0's proof)."""
    word, node0_nonce = read_line(sock).split()
    assert word == "challenge"
    nonce = secrets.token_hex(16)
    said = f"{kind} {node} {nonce} {mac(kind, node, node0_nonce, nonce, secret)}\n"
    sock.sendall(said.encode())
    assert read_line(sock) == f"proof {mac(f'node0 {kind}', node, node0_nonce, nonce, secret)}\n"
    return [said]


def answer(sock: socket.socket, secret: str = SECRET, check: bool = True) -> tuple[str, int]:
    """Node 0's half of the handshake (``check=False``: prove without checking the node's mac)."""
    nonce = secrets.token_hex(16)
    sock.sendall(f"challenge {nonce}\n".encode())
    kind, node, node_nonce, given = read_line(sock).split()
    if check:
        assert given == mac(kind, int(node), nonce, node_nonce, secret)
    sock.sendall(f"proof {mac(f'node0 {kind}', int(node), nonce, node_nonce, secret)}\n".encode())
    return kind, int(node)


def test_a_client_failure_stops_the_server_and_the_other_clients(watch: SimpleNamespace) -> None:
    server_stops = Calls()
    watch.server(server_stops)
    failing, other = watch.client(1), watch.client(2)
    assert failing.connected() and other.connected()

    failing.client.report_failure()

    assert server_stops.wait() and other.stops.wait()
    assert server_stops.values == [1]
    assert other.stops.values == [1]
    assert failing.problems.values == other.problems.values == []


def test_the_failing_client_is_not_told_to_stop(watch: SimpleNamespace) -> None:
    server_stops = Calls()
    watch.server(server_stops)
    failing, other = watch.client(1), watch.client(2)
    assert failing.connected() and other.connected()
    failing.reading()

    failing.client.report_failure()

    assert other.stops.wait()
    assert not failing.stops.wait(QUIET_S)


def test_a_failure_that_follows_another_learns_which_came_first(watch: SimpleNamespace) -> None:
    # Rank 3 on node 1 raises; rank 4 on node 2, in an all-reduce with it, dies of the reset
    # connection a moment later: node 2 was stopped by node 1's failure, not a cause.
    server_stops = Calls()
    server = watch.server(server_stops)
    first, second = watch.client(1), watch.client(2)
    assert first.connected() and second.connected()

    assert first.client.report_failure() is None  # node 0 heard it first: the cause
    assert second.stops.wait()
    assert second.client.report_failure() == 1
    assert server.report_failure() == 1
    assert server_stops.values == [1]


def test_a_server_failure_stops_every_client(watch: SimpleNamespace) -> None:
    server_stops = Calls()
    server = watch.server(server_stops)
    nodes = [watch.client(1), watch.client(2)]
    accepted(server, 2)

    server.report_failure()

    assert all(node.stops.wait() for node in nodes)
    assert [node.stops.values for node in nodes] == [[0], [0]]
    assert all(node.ended() for node in nodes)
    assert server_stops.values == []


def test_only_the_first_failure_counts(watch: SimpleNamespace) -> None:
    server_stops = Calls()
    server = watch.server(server_stops)
    first, second = watch.client(1), watch.client(2)
    assert first.connected() and second.connected()

    first.client.report_failure()
    assert server_stops.wait() and second.stops.wait()
    server.report_failure()
    second.client.report_failure()

    third = watch.client(3)

    assert third.stops.wait()
    assert third.stops.values == [1]
    assert server_stops.values == [1]
    assert second.stops.values == [1]


def test_a_finished_server_stops_nobody(watch: SimpleNamespace) -> None:
    server_stops = Calls()
    server = watch.server(server_stops)
    nodes = [watch.client(1), watch.client(2)]
    accepted(server, 2)
    peers = list(server._peers)

    server.finish()
    for peer in peers:  # then node 0's supervisor exits: the connections close
        with contextlib.suppress(OSError):  # finish() may have closed it already
            peer.sock.shutdown(socket.SHUT_RDWR)

    assert all(node.ended() for node in nodes)
    assert [node.stops.values for node in nodes] == [[], []]
    assert [node.problems.values for node in nodes] == [[], []]
    assert server_stops.values == []


def test_a_client_arriving_after_finish_is_not_stopped(watch: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teardown, "_CONNECT_FOR_S", 0.5)
    server = watch.server(Calls())
    first = watch.client(1)
    accepted(server, 1)
    time.sleep(0.05)  # node 0's accept thread is back in accept()
    server.finish()

    late = watch.client(2)
    eventually(lambda: bool(server._peers) or late.problems.values != [], timeout=1.0)
    for peer in list(server._peers):  # node 0's supervisor exits: the kernel closes what it held
        peer.sock.shutdown(socket.SHUT_RDWR)

    assert not late.stops.wait(QUIET_S)
    assert first.stops.values == []


def test_node_0_vanishing_stops_every_client(watch: SimpleNamespace) -> None:
    server_stops = Calls()
    server = watch.server(server_stops)
    nodes = [watch.client(1), watch.client(2)]
    accepted(server, 2)

    vanish(server)

    assert all(node.lost.wait() for node in nodes)
    assert [[lost for lost, _ in node.lost.values] for node in nodes] == [[0], [0]]
    assert [node.stops.values for node in nodes] == [[], []]
    assert server_stops.values == []


def test_a_finished_client_ignores_node_0_vanishing(watch: SimpleNamespace) -> None:
    server = watch.server(Calls())
    node = watch.client(1)
    accepted(server, 1)

    node.client.finish()
    vanish(server)

    assert node.ended()
    assert node.stops.values == []


@pytest.mark.parametrize("failed_node", [0, 2])
def test_a_late_client_is_told_to_stop_at_once(watch: SimpleNamespace, failed_node: int) -> None:
    server = watch.server(Calls())
    if failed_node == 0:
        server.report_failure()
    else:
        failing = watch.client(failed_node)
        assert failing.connected()
        failing.client.report_failure()

    late = watch.client(3)

    assert late.stops.wait()
    assert late.stops.values == [failed_node]
    assert late.ended()


def test_an_unreachable_node_0_is_a_problem_and_lost(
    watch: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, port: int
) -> None:
    """Nothing listens for node 0: after the connect limit, node 0 is lost (its host died
    before its watcher started, or this node is cut off from it)."""
    monkeypatch.setattr(teardown, "_CONNECT_FOR_S", 0.4)

    node = watch.client(1)

    assert node.lost.wait(WAIT_S + 1)
    assert node.ended()
    assert len(node.problems.values) == 1
    assert "cannot reach node 0" in node.problems.values[0]
    assert str(port) in node.problems.values[0]
    assert [lost for lost, _ in node.lost.values] == [0]
    assert node.stops.values == []


# --- heartbeats: a silent node is lost, a short silence is not ---------------------------------

LIMIT_S = 0.4
"""A heartbeat limit short enough for a test; beats go every LIMIT_S / 10."""


def raw_client(port: int, node: int) -> socket.socket:
    """A node that says who it is and then nothing: its host froze, or its link is cut."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    prove(sock, node)
    return sock


def test_a_silent_node_is_lost_and_the_others_are_told(watch: SimpleNamespace, port: int) -> None:
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, LIMIT_S)
    other = watch.client(1, LIMIT_S)
    accepted(server, 1)
    silent = raw_client(port, 2)
    began = time.time()
    try:
        assert server_lost.wait(LIMIT_S * 5)
        ((node, heard),) = server_lost.values
        assert node == 2
        assert began - 0.1 <= heard <= began + LIMIT_S  # it was last heard saying hello
        assert time.time() - began >= LIMIT_S  # not before the limit
        assert other.lost.wait()
        assert other.lost.values == [(2, pytest.approx(heard, abs=0.01))]
        assert other.stops.values == []
    finally:
        silent.close()


def test_a_node_whose_supervisor_dies_is_lost_at_once(watch: SimpleNamespace, port: int) -> None:
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, timeout=60.0)
    other = watch.client(1, timeout=60.0)
    accepted(server, 1)
    dying = raw_client(port, 2)
    accepted(server, 2)
    dying.close()  # the kernel closes a killed process's socket: no "bye"

    assert server_lost.wait() and other.lost.wait()
    assert [node for node, _ in server_lost.values] == [2]


def test_a_node_that_ends_well_is_not_lost(watch: SimpleNamespace) -> None:
    """Node 1 says bye and goes quiet: three limits later nobody counts it lost. (The limit is
    longer than LIMIT_S here: on two shared cores under a full suite, a 0.4 s limit once
    counted the node that stayed lost, which is not what this test is about.)"""
    limit = LIMIT_S * 3
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, limit)
    ending, staying = watch.client(1, limit), watch.client(2, limit)
    accepted(server, 2)

    ending.client.finish()

    assert not server_lost.wait(limit * 3), server_lost.values
    assert staying.lost.values == staying.stops.values == []


def test_a_node_that_ends_as_its_handshake_ends_is_not_lost(
    watch: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that ends at once: the node finishes while node 0 has counted it in but its
    own side of the handshake is not over. One of the two still says ``bye`` (the full suite
    once caught a node lost so, the other side of the race)."""
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, 60.0)
    made: list[WatchClient] = []
    real = teardown_client.prove_to_node_0

    def proved_then_finished(*args: Any) -> Any:
        answer = real(*args)
        assert eventually(lambda: bool(made) and len(server._peers) == 1)
        made[0].finish()  # before the handshake's end is marked here
        return answer

    monkeypatch.setattr(teardown_client, "prove_to_node_0", proved_then_finished)
    ending = watch.client(1, 60.0)
    made.append(ending.client)

    assert ending.ended()
    assert eventually(lambda: not server._peers)  # node 0 let it go
    assert not server_lost.wait(QUIET_S), server_lost.values


def test_beats_keep_a_quiet_job_alive_past_the_limit(watch: SimpleNamespace) -> None:
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, LIMIT_S)
    nodes = [watch.client(1, LIMIT_S), watch.client(2, LIMIT_S)]
    accepted(server, 2)

    assert not server_lost.wait(LIMIT_S * 4)
    assert [(n.lost.values, n.stops.values) for n in nodes] == [([], []), ([], [])]


def test_a_silence_shorter_than_the_limit_loses_nothing(watch: SimpleNamespace, port: int) -> None:
    """A cut that heals: beats wait in TCP's buffers and arrive late, within the limit."""
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, LIMIT_S * 2)
    slow = raw_client(port, 3)
    accepted(server, 1)
    try:
        for _ in range(6):
            time.sleep(LIMIT_S)  # silent for half the limit, then heard again
            slow.sendall(b"beat\n")
        assert server_lost.values == []
    finally:
        slow.sendall(b"bye\n")
        slow.close()


def test_a_silent_node_0_is_lost_to_every_client(port: int, watch: SimpleNamespace) -> None:
    with socket.create_server(("127.0.0.1", port)) as frozen:  # accepts, then says nothing
        node = watch.client(1, LIMIT_S)
        peer, _ = frozen.accept()
        began = time.time()
        with peer:
            assert node.lost.wait(LIMIT_S * 5)
            ((lost, heard),) = node.lost.values
            assert lost == 0 and heard <= began + 0.1
            assert time.time() - began >= LIMIT_S * 0.9
            assert node.ended()


def test_a_node_that_never_connects_is_lost(watch: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three nodes, node 2 never connects (its host died before its watcher started)."""
    monkeypatch.setattr(teardown, "_CONNECT_FOR_S", LIMIT_S)
    server_lost = Lost()
    began = time.time()
    server = watch.server(Calls(), server_lost, LIMIT_S, nodes=3)
    present = watch.client(1, LIMIT_S)
    accepted(server, 1)

    assert server_lost.wait(LIMIT_S * 5)
    assert time.time() - began >= LIMIT_S
    assert [node for node, _ in server_lost.values] == [2]
    assert present.lost.wait() and [node for node, _ in present.lost.values] == [2]


def test_nodes_arriving_one_by_one_over_more_than_the_limit_lose_nothing(
    watch: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launch of 253 hosts on 2 cores commits over more than a minute: while nodes keep
    saying hello, the last one is late, not dead."""
    monkeypatch.setattr(teardown, "_CONNECT_FOR_S", LIMIT_S)
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, LIMIT_S, nodes=4)
    for node in (1, 2, 3):  # the last hello comes 1.8 x the limit after the server started
        time.sleep(LIMIT_S * 0.6)
        watch.client(node, LIMIT_S)
    accepted(server, 3)

    assert not server_lost.wait(LIMIT_S * 2)


def test_every_node_connecting_loses_nothing(watch: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(teardown, "_CONNECT_FOR_S", LIMIT_S)
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, LIMIT_S, nodes=3)
    watch.client(1, LIMIT_S), watch.client(2, LIMIT_S)
    accepted(server, 2)

    assert not server_lost.wait(LIMIT_S * 3)


def test_a_node_whose_connection_stalls_is_kept_alive_by_probes(watch: SimpleNamespace, port: int) -> None:
    """After a cut, TCP retransmits what waited with backoff, long after the link is back:
    the node's probes on new connections (``alive``) count as heard."""
    server_lost = Lost()
    server = watch.server(Calls(), server_lost, LIMIT_S)
    stalled = raw_client(port, 2)  # says hello, then nothing on this connection
    accepted(server, 1)
    try:
        for _ in range(int(LIMIT_S * 3 / (LIMIT_S / 5))):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as probe:
                prove(probe, 2, "alive")  # node 0's proof is its answer
            time.sleep(LIMIT_S / 5)
        assert server_lost.values == []
    finally:
        stalled.sendall(b"bye\n")
        stalled.close()


def test_a_client_whose_connection_stalls_probes_node_0(port: int, watch: SimpleNamespace) -> None:
    """Node 0's beats stall on the old connection, but it answers probes: not lost."""
    with socket.create_server(("127.0.0.1", port)) as fake:
        node = watch.client(1, LIMIT_S)
        main, _ = fake.accept()
        assert answer(main) == ("hello", 1)  # then never written to: node 0's beats are stuck in TCP
        probes = 0
        fake.settimeout(LIMIT_S)
        deadline = time.monotonic() + LIMIT_S * 3
        with main:
            while time.monotonic() < deadline:
                try:
                    probe, _ = fake.accept()
                except TimeoutError:
                    break
                with probe:
                    if answer(probe) == ("alive", 1):
                        probes += 1
            assert probes >= 2
            assert node.lost.values == [] and node.stops.values == []
            node.client.finish()


# --- strangers: only peers that prove the job's secret count --------------------------------------


def stranger(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)


@pytest.mark.parametrize(
    "said",
    [
        b"hello 2\nfailed 2\n",
        b"failed 2\n",
        b"hello 2 " + b"0" * 32 + b" " + b"0" * 64 + b"\nfailed 2\n",  # the handshake's shape, a made-up mac
        b"\x00\xff\xfe garbage \x1b[2J\n",
        b"x" * 5000,  # no end of line
    ],
    ids=["hello-failed", "failed", "made-up-mac", "garbage", "too-long"],
)
def test_a_stranger_stops_nothing_and_is_noted_once(watch: SimpleNamespace, port: int, said: bytes) -> None:
    """Anyone who can reach node 0's port: refused before any line counts."""
    server_stops, server_lost, notes = Calls(), Lost(), Calls()
    server = watch.server(server_stops, server_lost, notes=notes)
    node = watch.client(1)
    assert node.connected()
    with stranger(port) as sock:
        sock.sendall(said)
        assert not server_stops.wait(QUIET_S)
    assert not server_lost.wait(QUIET_S)
    assert notes.wait()
    assert node.stops.values == node.lost.values == []
    assert [peer.node for peer in server._peers] == [1]
    (note,) = notes.values
    assert "refused a connection from 127.0.0.1:" in note


def test_a_strangers_hello_and_close_loses_nothing(watch: SimpleNamespace, port: int) -> None:
    """``hello 1`` then a closed connection: a node whose supervisor died, if it counted."""
    server_stops, server_lost, notes = Calls(), Lost(), Calls()
    watch.server(server_stops, server_lost, timeout=60.0, notes=notes)
    node = watch.client(1, timeout=60.0)
    assert node.connected()
    with stranger(port) as sock:
        sock.sendall(b"hello 1\n")
    assert not server_lost.wait(QUIET_S)
    assert server_stops.values == [] and node.lost.values == node.stops.values == []
    assert notes.wait()


def test_a_strangers_hello_is_not_a_node(watch: SimpleNamespace, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stranger saying ``hello 1`` and beating does not stand in for node 1, which never
    connects: node 1 is lost when the connect limit passes."""
    monkeypatch.setattr(teardown, "_CONNECT_FOR_S", LIMIT_S)
    server_lost = Lost()
    watch.server(Calls(), server_lost, LIMIT_S, nodes=2)
    with stranger(port) as sock:
        sock.sendall(b"hello 1\n")
        for _ in range(15):
            if server_lost.wait(LIMIT_S / 5):
                break
            with contextlib.suppress(OSError):  # refused: node 0 closed it
                sock.sendall(b"beat\n")
    assert [node for node, _ in server_lost.values] == [1]


def test_a_truncated_handshake_is_refused(watch: SimpleNamespace, port: int) -> None:
    server_stops, notes = Calls(), Calls()
    server = watch.server(server_stops, notes=notes)
    with stranger(port) as sock:
        word, node0_nonce = read_line(sock).split()
        assert word == "challenge"
        nonce = secrets.token_hex(16)
        line = f"hello 2 {nonce} {mac('hello', 2, node0_nonce, nonce)}\n"
        sock.sendall(line[:40].encode())  # the right line, cut short: then the connection ends
        sock.shutdown(socket.SHUT_WR)
        assert notes.wait()
        assert read_line(sock) == ""  # no proof: closed
    assert "closed mid-line" in notes.values[0]
    assert server._peers == [] and server_stops.values == []


def test_a_silent_stranger_is_refused_in_time(
    watch: SimpleNamespace, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(teardown, "AUTH_WITHIN_S", 0.2)
    notes = Calls()
    server = watch.server(Calls(), notes=notes)
    with stranger(port) as sock:
        assert read_line(sock).startswith("challenge ")
        assert notes.wait()
        assert read_line(sock) == ""  # node 0 closed it
    assert "silent too long" in notes.values[0]
    assert server._peers == []


def test_a_replayed_handshake_is_refused(watch: SimpleNamespace, port: int) -> None:
    """Lines recorded from a node's connection, sent again on a new one: node 0's nonce
    differs, so the recorded mac proves nothing."""
    server_stops, notes = Calls(), Calls()
    server = watch.server(server_stops, notes=notes)
    with stranger(port) as first:  # a real node 2's connection, recorded
        transcript = [*prove(first, 2), "failed 2\n"]
        accepted(server, 1)
        first.sendall(b"bye\n")
    assert eventually(lambda: server._peers == [])
    with stranger(port) as replay:
        assert read_line(replay).startswith("challenge ")
        replay.sendall("".join(transcript).encode())
        assert notes.wait()
        assert read_line(replay) == ""  # no proof: closed
    assert "wrong proof" in notes.values[0]
    assert not server_stops.wait(QUIET_S)


@pytest.mark.parametrize("forgery", ["no-handshake", "wrong-secret", "replayed-proof"])
def test_a_forged_node_0_cannot_stop_a_node(port: int, watch: SimpleNamespace, forgery: str) -> None:
    """Someone listening at node 0's address without the secret says ``stop 1``: node 2
    refuses the connection and stops for nothing."""
    # A real node 0's proof for node 2, to a challenge the forger can repeat (its own nonce).
    node0_nonce, recorded_nonce = secrets.token_hex(16), secrets.token_hex(16)
    recorded_proof = mac("node0 hello", 2, node0_nonce, recorded_nonce)
    with socket.create_server(("127.0.0.1", port)) as forger:
        node = watch.client(2)
        sock, _ = forger.accept()
        with sock:
            if forgery == "wrong-secret":
                assert answer(sock, secret="6f" * 32, check=False) == ("hello", 2)
            elif forgery == "replayed-proof":
                sock.sendall(f"challenge {node0_nonce}\n".encode())
                read_line(sock)
                sock.sendall(f"proof {recorded_proof}\n".encode())
            sock.sendall(b"stop 1\nlost 1 1.0\n")
            assert not node.stops.wait(QUIET_S)
            assert node.problems.wait()
    assert node.stops.values == node.lost.values == []
    assert "handshake with node 0" in node.problems.values[0]
    assert not node.client._connected.is_set()


def test_a_forged_node_0_answering_a_probe_is_not_heard(port: int, watch: SimpleNamespace) -> None:
    """Node 0's beats stall, and a forger answers the probes: node 0 is lost all the same."""
    with socket.create_server(("127.0.0.1", port)) as fake:
        node = watch.client(1, LIMIT_S)
        main, _ = fake.accept()
        with main:
            assert answer(main) == ("hello", 1)  # the real node 0, then stalled
            fake.settimeout(LIMIT_S)
            with contextlib.suppress(TimeoutError):
                while not node.lost.wait(0):
                    probe, _ = fake.accept()
                    with probe:
                        answer(probe, secret="6f" * 32, check=False)
                        probe.sendall(b"beat\n")
            assert node.lost.wait()
    assert [lost for lost, _ in node.lost.values] == [0]
    assert any("handshake with node 0" in problem for problem in node.problems.values)


def test_refusals_are_noted_up_to_a_limit(watch: SimpleNamespace, port: int) -> None:
    notes = Calls()
    watch.server(Calls(), notes=notes)
    for _ in range(teardown._NOTED_REFUSALS + 5):
        with stranger(port) as sock:
            sock.sendall(b"failed 2\n")
            assert read_line(sock).startswith("challenge ")
            assert read_line(sock) == ""
    assert eventually(lambda: len(notes.values) == teardown._NOTED_REFUSALS + 1)
    assert not eventually(lambda: len(notes.values) > teardown._NOTED_REFUSALS + 1, timeout=QUIET_S)
    assert "not noted" in notes.values[-1]


# --- where node 0 listens ------------------------------------------------------------------------


def test_node_0_listens_on_its_address_only(watch: SimpleNamespace, port: int) -> None:
    notes = Calls()
    watch.server(Calls(), notes=notes)  # at 127.0.0.1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=WAIT_S).close()
    node = watch.client(1)
    assert node.connected()
    assert notes.values == []


def test_node_0_behind_a_nat_listens_everywhere_and_says_so(port: int) -> None:
    """The address the others reach is not this host's (a NAT's, 192.0.2.1 here): every
    interface, noted."""
    notes = Calls()
    server = WatchServer("192.0.2.1", port, SECRET, Calls(), notes)
    try:
        with socket.create_connection(("127.0.0.2", port), timeout=WAIT_S) as sock:
            assert read_line(sock).startswith("challenge ")
        note = notes.values[0]  # then this test's connection, refused
        assert "192.0.2.1 is none of this host's: listening on every interface" in note
    finally:
        server.finish()
