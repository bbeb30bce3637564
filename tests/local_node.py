"""The middle test layer: the real node agent as a local process, needing no root and no SSH.

A ``LocalNode`` is one node's worth of state: a private state directory (XDG_STATE_HOME, so
the run directories are the test's own) and a private tmux server (LAUNCHER_TMUX_SOCKET),
as libtmux's own pytest fixtures give each test a server on a unique socket. Agents are
started exactly as the launcher starts a ``localhost`` agent, through ``open_agent``:

    node = LocalNode.create(tmp_path)
    with node.environment():
        record = asyncio.run(launch_job(make_spec("job.py", hosts="localhost")))

``close()`` kills the node's tmux server and every process still carrying a job marker
of this node's jobs, so a failed test leaves nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from launcher.hosts.files import LOCALHOST
from launcher.node.rundir import RunDir
from launcher.protocol.base import JOB_MARKER, Request
from launcher.transport.agent import NodeAgent, SshOptions, open_agent

A = TypeVar("A")


@dataclass
class LocalNode:
    root: Path
    """Holds the state directory and the tmux socket (short: a socket path has ~100 bytes)."""
    jobs: set[str] = field(default_factory=set)
    """Jobs started through this node, for ``close()``."""

    @classmethod
    def create(cls) -> LocalNode:
        root = Path(tempfile.mkdtemp(prefix="lnode-"))
        (root / "state").mkdir()
        return cls(root)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def tmux_socket(self) -> Path:
        return self.root / "tmux.sock"

    def env(self) -> dict[str, str]:
        """The variables that make an agent (and everything it starts) this node's."""
        return {
            "XDG_STATE_HOME": str(self.state_dir),
            "LAUNCHER_TMUX_SOCKET": str(self.tmux_socket),
            "XDG_CACHE_HOME": str(self.root / "cache"),  # a node side sent here (transport/node_side.py)
        }

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """This process's environment set to the node's, so that a localhost agent is this node."""
        saved = {key: os.environ.get(key) for key in self.env()}
        os.environ.update(self.env())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def call(self, request: Request[A], timeout: float = 60.0, python: str | None = None) -> A:
        """One request to a fresh agent of this node (as ``status`` or ``kill`` do)."""
        if hasattr(request, "job"):
            self.jobs.add(request.job)

        async def ask() -> A:
            agent = await self.open(python)
            try:
                return await agent.call(request, timeout=timeout)
            finally:
                await agent.close()

        with self.environment():
            return asyncio.run(ask())

    async def open(self, python: str | None = None) -> NodeAgent:
        options = SshOptions() if python is None else SshOptions(python=python)
        return await open_agent(LOCALHOST, options)

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The node's own tmux server (never the user's)."""
        return subprocess.run(
            ["tmux", "-S", str(self.tmux_socket), *args], capture_output=True, text=True, timeout=10, check=False
        )

    def sessions(self) -> list[str]:
        listed = self.tmux("list-sessions", "-F", "#{session_name}")
        return listed.stdout.split() if listed.returncode == 0 else []

    def supervisor(self, job: str) -> psutil.Process | None:
        """The job's supervisor, forked from the agent (no marker): by the pid it recorded."""
        with self.environment():
            recorded = RunDir.of(job).read_supervisor()
        if recorded is None:
            return None
        try:
            proc = psutil.Process(recorded.pid)
            alive = abs(proc.create_time() - recorded.create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return None
        return proc if alive else None

    def job_processes(self, job: str) -> list[psutil.Process]:
        """Live processes of ``job`` started from this node (the marker, and this node's state
        dir), its supervisor first."""
        supervisor = self.supervisor(job)
        found = [] if supervisor is None else [supervisor]
        for proc in psutil.process_iter():
            try:
                env = proc.environ()
                mine = env.get(JOB_MARKER) == job and env.get("XDG_STATE_HOME") == str(self.state_dir)
                if mine and proc.status() != psutil.STATUS_ZOMBIE and proc not in found:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def wait_for(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def close(self) -> None:
        """Kill what this node started (by pid), its tmux server, and remove its files."""
        runs = self.state_dir / "launcher" / "runs"
        jobs = self.jobs | ({p.name for p in runs.iterdir()} if runs.is_dir() else set())
        for job in jobs:
            for proc in self.job_processes(job):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGKILL)
        self.tmux("kill-server")
        shutil.rmtree(self.root, ignore_errors=True)
