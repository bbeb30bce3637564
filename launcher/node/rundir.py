"""A job's run directory on one node, and the only code that knows its files.

``<state>/launcher/runs/<job>/<hostname>/`` (``<state>`` is ``$XDG_STATE_HOME``, by default
``~/.local/state``). The hostname is part of the path because homes are often shared over
NFS: two nodes of a job never write the same file. The supervisor writes; the agent reads.

    spec.json      JobSpec: what the supervisor runs (argv, env, cwd, teardown)
    supervisor.json  SupervisorProcess: the supervisor forked from the agent (``detach.py``)
    pane           a FIFO: the supervisor writes the job's lines, the tmux pane's ``cat`` shows them
    held           the supervisor's pid, while it holds the command for ``Commit``
    committed      present once the launcher committed the start (every host started)
    started.json   SupervisorStarted: written once the command runs
    exit.json      ExitRecord: how the command ended (or why it could not start)
    ranks.json     the global ranks seen on this node
    killed         present once ``kill`` began
    output.log     every output line, labelled with its global rank (``logfile.py``)
    torchrun/      torchrun's ``--log-dir``
    inputs/        files the launch sent with the job (``Start.files``): ``call.pkl`` of ``run``
    results/       ``<rank>.pkl``: what each rank of ``launcher.run`` returned or raised

Only its user can read any of it (``protocol/private.py``): the directories are 0700 and the files
0600, as is ``<state>/launcher`` above them. ``spec.json`` holds the job's environment (its
tokens and keys), ``inputs/`` the arguments of ``launcher.run``, ``output.log`` whatever the
job printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import socket
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any, TypeVar

from launcher.node.errors import NodeError
from launcher.protocol import private
from launcher.protocol.codec import ProtocolError, decode, to_wire
from launcher.protocol.paths import runs_dir
from launcher.protocol.teardown import Teardown

T = TypeVar("T")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    job: str
    argv: list[str]
    env: dict[str, str]
    """The whole environment of the command (the agent's, plus the job's variables)."""
    cwd: str
    teardown: Teardown | None = None
    hold: float | None = None
    """Seconds to wait for ``committed`` before running the command (None: run at once)."""
    agent_pid: int | None = None
    """The agent that started the job (with ``agent_create_time``): gone before the commit
    means the launcher is gone (its SSH session closed), so the job ends at once."""
    agent_create_time: float | None = None


@dataclasses.dataclass(frozen=True)
class SupervisorProcess:
    """The supervisor, written by itself as its first act: forked from the agent, its
    ``/proc/<pid>/environ`` is the agent's and lacks the job marker, so the kill finds it here."""

    pid: int
    create_time: float


@dataclasses.dataclass(frozen=True)
class SupervisorStarted:
    pid: int
    """The supervisor's pid, with ``create_time`` to tell it from a later process with that pid."""
    create_time: float
    child: int
    """The command's pid (torchrun)."""
    time: float


@dataclasses.dataclass(frozen=True)
class ExitRecord:
    exit_code: int
    """The command's exit status, or 128 + N after signal N."""
    time: float
    signal: int | None = None
    stopped_by: int | None = None
    """The node whose failure made this one stop (teardown)."""
    error: str | None = None
    """Why the command could not start at all."""
    lost_node: int | None = None
    """The node that fell silent and made this one stop (teardown heartbeats)."""
    last_heard: float | None = None
    """When ``lost_node`` was last heard from (epoch seconds)."""


class RunDir:
    """One job's files on this node."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def of(cls, job: str) -> RunDir:
        return cls(runs_dir() / job / socket.gethostname())

    @property
    def log_path(self) -> Path:
        return self.path / "output.log"

    @property
    def torchrun_dir(self) -> Path:
        return self.path / "torchrun"

    def exists(self) -> bool:
        return self.path.is_dir()

    def reset(self) -> None:
        """Empty, for a new run of the job under the same name; only this user's (0700).

        A ``NodeError`` (``start_failed``) names a directory above it that other users can
        read and that is not this user's to tighten: nothing is written then."""
        self._make_parent()
        if self.path.exists():
            shutil.rmtree(self.path)
        private.make_dir(self.path)

    def remove(self) -> None:
        """Gone, with its lock file, and the job's directory if no other host's is in it
        (hosts that share a disk share it): a launch rolled back leaves nothing here."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.path.parent / f".{self.path.name}.lock").unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # refused while another host's run is in it

    def open_lock(self) -> IO[bytes]:
        """The lock file beside the run directory (``.<hostname>.lock``), 0600, for ``flock``."""
        self._make_parent()
        return open(private.open_append(self.path.parent / f".{self.path.name}.lock"), "ab")

    def _make_parent(self) -> None:
        """``<state>/launcher/runs/<job>`` made or tightened to 0700, from ``<state>/launcher`` down."""
        top = runs_dir().parent
        try:
            if self.path.parent.is_relative_to(top):
                private.make_dirs(top, *self.path.parent.relative_to(top).parts)
            else:  # a run directory elsewhere (tests): what is above it is not ours
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except private.NotPrivateError as exc:
            raise NodeError("start_failed", str(exc)) from None

    @property
    def pane_path(self) -> Path:
        return self.path / "pane"

    def write_supervisor(self, supervisor: SupervisorProcess) -> None:
        self._write("supervisor.json", supervisor)

    def read_supervisor(self) -> SupervisorProcess | None:
        return self._read("supervisor.json", SupervisorProcess)

    def write_spec(self, spec: JobSpec) -> None:
        self._write("spec.json", spec)

    def read_spec(self) -> JobSpec | None:
        return self._read("spec.json", JobSpec)

    def mark_held(self, pid: int) -> None:
        self._write("held", pid)

    def held_by(self) -> int | None:
        """The pid of the supervisor holding the command (it waits for SIGUSR1)."""
        return self._read("held", int)

    def is_held(self) -> bool:
        return (self.path / "held").exists()

    def mark_committed(self) -> None:
        private.touch(self.path / "committed")

    def is_committed(self) -> bool:
        return (self.path / "committed").exists()

    def write_started(self, started: SupervisorStarted) -> None:
        self._write("started.json", started)

    def read_started(self) -> SupervisorStarted | None:
        return self._read("started.json", SupervisorStarted)

    def has_started(self) -> bool:
        return (self.path / "started.json").exists()

    def write_exit(self, ended: ExitRecord) -> None:
        self._write("exit.json", ended)

    def read_exit(self) -> ExitRecord | None:
        return self._read("exit.json", ExitRecord)

    def has_ended(self) -> bool:
        return (self.path / "exit.json").exists()

    def write_ranks(self, ranks: list[int]) -> None:
        self._write("ranks.json", ranks)

    def read_ranks(self) -> list[int]:
        return self._read("ranks.json", list[int]) or []

    def mark_killed(self) -> None:
        private.touch(self.path / "killed")

    def was_killed(self) -> bool:
        return (self.path / "killed").exists()

    def write_inputs(self, files: dict[str, bytes]) -> None:
        """``inputs/<name>`` for each file; a name must be plain (no ``/``, no leading dot)."""
        for name in files:
            if not _PLAIN_NAME.fullmatch(name):
                raise ValueError(f"bad input file name {name!r}")
        private.make_dir(self.path / "inputs")
        for name, data in files.items():
            private.write_file(self.path / "inputs" / name, data)

    def input_path(self, name: str) -> Path:
        return self.path / "inputs" / name

    def write_result(self, rank: int, data: bytes) -> None:
        """Rank ``rank``'s outcome (a pickle), atomically: a reader never sees half of it."""
        directory = self.path / "results"
        private.make_dir(directory)
        private.write_file(directory / f"{rank}.pkl", data)

    def read_results(self, skip: Collection[int] = (), budget: int = 1 << 20) -> tuple[dict[int, bytes], bool]:
        """The ranks' outcomes, in rank order, but for ``skip``; at least one, then only while
        the total stays within ``budget`` bytes. True when some were left for a next call."""
        directory = self.path / "results"
        ranks = sorted(int(p.stem) for p in directory.glob("*.pkl") if p.stem.isdigit()) if directory.is_dir() else []
        found: dict[int, bytes] = {}
        total = 0
        for rank in (r for r in ranks if r not in skip):
            data = (directory / f"{rank}.pkl").read_bytes()
            if found and total + len(data) > budget:
                return found, True
            found[rank] = data
            total += len(data)
        return found, False

    def restarts(self) -> int:
        """How often torchrun restarted the workers (attempt directories, less the first)."""
        return max(len(list(self.torchrun_dir.glob("*/attempt_*"))) - 1, 0)

    def _write(self, name: str, value: Any) -> None:
        """Atomically (a reader sees the old file or the whole new one), 0600."""
        private.write_file(self.path / name, json.dumps(to_wire(value)).encode("utf-8"))

    def _read(self, name: str, cls: type[T]) -> T | None:
        """The file's record; None when it is missing or damaged (a reboot mid-write)."""
        try:
            with open(self.path / name, encoding="utf-8") as fh:
                return decode(cls, json.load(fh))
        except (FileNotFoundError, NotADirectoryError, ValueError, ProtocolError):
            return None
