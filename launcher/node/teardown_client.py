"""Node i's teardown watcher: reports its failure, beats, and stops when told or when node 0 falls silent.

The lines it speaks are described in ``teardown.py`` (node 0's side); its handshake is in
``teardown_auth.py``. Standard library only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from launcher.node.teardown import (
    DEFAULT_TIMEOUT_S,
    PROBE_WITHIN_S,
    OnLost,
    OnProblem,
    OnStop,
    beat_interval,
    connect_within,
)
from launcher.node.teardown_auth import (
    Reader,
    Refused,
    Silent,
    close,
    is_time,
    keep_alive,
    prove_to_node_0,
    send,
)


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
        self._first_stop: int | None = None
        """The node named by the first ``stop`` node 0 sent: the failure it heard first."""
        self._stop_heard = threading.Event()
        """Set once node 0 proved the secret (and this node did)."""
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        """Orders finish() and the handshake's end: exactly one of them says ``bye``."""
        self.activity: Callable[[], float] | None = None
        """When this node's ranks last printed, sent with each beat (``--hang-timeout``)."""
        self.on_hang: Callable[[float], None] | None = None
        """Node 0 found the job hung: take the stacks here (then ``stacked`` is said)."""
        threading.Thread(target=self._run, daemon=True).start()

    def report_failure(self) -> int | None:
        """This node's command failed: tell node 0, and wait (a beat or two at most) for its
        ``stop``, which names the failure node 0 heard first. Returns that node when it is
        another: this node's failure followed it (its ranks died of the other's death)."""
        if self._connected.wait(timeout=5) and self._sock is not None:
            self._say(f"failed {self._node}\n")
            if not self._server_done:
                self._stop_heard.wait(2 * beat_interval(self._timeout))
        self._closing = True
        self._ended.set()
        if self._sock is not None:
            close(self._sock)
        first = self._first_stop
        return first if first is not None and first != self._node else None

    def finish(self) -> None:
        """This node ended well: say ``bye`` (node 0 counts a close without it as a death).
        In the middle of the handshake, ``_connect`` says it once the handshake is over:
        either that or this sees the other's mark, under ``_state_lock``."""
        with self._state_lock:
            self._closing = True
            connected = self._connected.is_set()
        self._ended.set()
        if connected and self._sock is not None:
            self._say("bye\n")
            close(self._sock)

    def _say(self, line: str) -> None:
        with self._send_lock:
            if self._sock is not None:
                send(self._sock, line)

    def _run(self) -> None:
        reader = self._connect()
        if reader is None:
            return
        threading.Thread(target=self._beat, daemon=True).start()
        done = False
        for line in reader.rest():
            self._heard = time.time()
            kind, _, rest = line.partition(" ")
            node, _, when = rest.partition(" ")
            if kind in ("stop", "lost") and node.isdigit():
                if kind == "stop" and self._first_stop is None:
                    self._first_stop = int(node)
                self._stop_heard.set()
                if int(node) != self._node and not self._closing:  # our own failure echoed back: done already
                    self._stop(int(node), float(when) if kind == "lost" and is_time(when) else None)
                return
            if kind == "hang" and is_time(node) and self.on_hang is not None:
                threading.Thread(target=self._hang, args=(float(node),), daemon=True).start()
            if kind == "done":
                done = self._server_done = True
                self._ended.set()
        if not done and not self._closing:
            self._stop(0, self._heard)  # node 0 went away without a word: its host or its supervisor died

    def _connect(self) -> Reader | None:
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
                self._sock, reader, connected = sock, Reader(sock), time.time()
                try:
                    # Silence for a whole limit is node 0's silence, as on the connection after.
                    prove_to_node_0(sock, reader, self._secret, "hello", self._node, self._timeout)
                except Silent:
                    close(sock)
                    if not self._closing:
                        self._on_problem(f"teardown watcher: node 0 at {self._address} said nothing when connected")
                        self._stop(0, connected)
                    return None
                except Refused as exc:
                    close(sock)
                    if self._closing:
                        return None
                    failure = f"handshake failed: {exc}"
                    self._note_refused(str(exc))
                else:
                    with self._state_lock:
                        if not self._closing:
                            self._heard = time.time()
                            self._connected.set()
                    if not self._connected.is_set():  # finish() came during the handshake
                        send(sock, "bye\n")
                        close(sock)
                        return None
                    with contextlib.suppress(OSError):  # closed by finish(): the read ends at once
                        keep_alive(sock)
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
            self._say(f"beat {self.activity():.3f}\n" if self.activity is not None else "beat\n")
            silent = time.time() - self._heard
            if silent > 1.5 * interval and not self._probing.is_set():
                self._probing.set()
                threading.Thread(target=self._probe, args=(interval,), daemon=True).start()
            if silent > self._timeout:
                self._stop(0, self._heard)
                if self._sock is not None:
                    close(self._sock)
                return

    def _hang(self, last_output: float) -> None:
        if self.on_hang is not None:
            self.on_hang(last_output)
        self._say("stacked\n")

    def _probe(self, interval: float) -> None:
        """One new connection to node 0: its handshake, with ``alive``, is each side's proof of
        life. The connect gets one beat (the next probe's SYN is the fresh one that a healed
        link lets through at once); a connection made may take longer to authenticate."""
        try:
            with socket.create_connection(self._address, timeout=interval) as sock:
                within = max(interval, PROBE_WITHIN_S)
                prove_to_node_0(sock, Reader(sock), self._secret, "alive", self._node, within)
                self._heard = time.time()
        except Silent:
            pass  # still cut off: the next beat probes again
        except Refused as exc:
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
