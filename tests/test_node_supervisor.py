"""The middle layer: the supervisor forked from the agent (``launcher/node/detach.py``), through
the real agent and tmux (``local_node.py``). What the pane running the supervisor itself gave
must hold: the session shows the job's lines and ends with it, killing the session stops the
job, a kill finds the supervisor; and what a fork could leak must not: the agent's SSH
channel, its lock, its ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
from local_node import LocalNode

from launcher.job.kill import kill_job
from launcher.launching.spec import make_spec
from launcher.launching.start import launch_job
from launcher.node import processes
from launcher.node.rundir import RunDir
from launcher.protocol.base import session_name
from launcher.protocol.messages import Commit, Ended, Kill, KillReport, Prepare, Prepared, Start, Status, Wait
from launcher.transport.agent import NodeAgent

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

TALKS_THEN_SLEEPS = """\
import sys, time
print("first words", flush=True)
print("on stderr", file=sys.stderr, flush=True)
time.sleep(float(sys.argv[1]))
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "talk.py").write_text(TALKS_THEN_SLEEPS)
    return tmp_path


def launch(node: LocalNode, workdir: Path, name: str, seconds: float) -> None:
    node.jobs.add(name)
    spec = make_spec("talk.py", [str(seconds)], hosts="localhost", name=name, runner="python", cwd=str(workdir))
    with node.environment():
        asyncio.run(launch_job(spec))


async def start_held(
    node: LocalNode, agent: NodeAgent, job: str, cwd: str, want_port: bool = False
) -> tuple[Prepared, psutil.Process]:
    """Prepare ``job`` and start it held for its commit (``sleep 600``): the prepare's answer
    and the supervisor, as it holds."""
    node.jobs.add(job)
    prepared = await agent.call(Prepare(job=job, cwd=cwd, want_port=want_port))
    await agent.call(Start(job=job, argv=["sleep", "600"], env={}, cwd=cwd, hold=120.0))
    supervisor = node.supervisor(job)
    assert supervisor is not None
    return prepared, supervisor


def pane_text(node: LocalNode, job: str) -> str:
    return node.tmux("capture-pane", "-p", "-t", f"={session_name(job)}:").stdout


def test_the_pane_shows_the_jobs_lines_and_the_session_ends_with_it(node: LocalNode, workdir: Path) -> None:
    launch(node, workdir, "shown", 1.5)

    node.wait_for("the lines in the pane", lambda: "first words" in pane_text(node, "shown"))
    assert "on stderr" in pane_text(node, "shown")
    assert node.call(Wait(job="shown"), timeout=30) == Ended(state="succeeded")
    node.wait_for("the session's end", lambda: node.sessions() == [], timeout=10)


def test_killing_the_session_by_hand_stops_the_job_as_tmux_did(node: LocalNode, workdir: Path) -> None:
    launch(node, workdir, "hup", 600)
    node.wait_for("the job's output", lambda: "first words" in pane_text(node, "hup"))

    node.tmux("kill-session", "-t", f"={session_name('hup')}")

    assert node.call(Wait(job="hup"), timeout=30) == Ended(state="failed")
    status = node.call(Status(job="hup"))
    assert status.signal == 1  # SIGHUP, forwarded to the command
    node.wait_for("no process of the job", lambda: node.job_processes("hup") == [], timeout=10)


def test_the_forked_supervisor_keeps_nothing_of_the_agents(node: LocalNode, workdir: Path) -> None:
    launch(node, workdir, "bare", 600)
    supervisor = node.supervisor("bare")
    assert supervisor is not None

    fds = {fd: os.readlink(f"/proc/{supervisor.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{supervisor.pid}/fd")}
    assert fds["0"] == "/dev/null"
    assert fds["1"].endswith("/pane") and fds["2"] == fds["1"]
    assert not [t for t in fds.values() if t.endswith(".lock")]  # the start's flock, held by the agent
    assert supervisor.ppid() != os.getpid() and os.getsid(supervisor.pid) != os.getsid(0)  # its own session


def test_a_held_supervisor_holds_no_port_of_the_agents(node: LocalNode, workdir: Path) -> None:
    """The agent holds the rendezvous and watch ports from the prepare to the commit; a fork
    that kept them would make the job's own bind fail."""

    async def hold_then_commit() -> list[int]:
        agent = await node.open()
        try:
            prepared, supervisor = await start_held(node, agent, "ports", str(workdir), want_port=True)
            ports = [p for p in (prepared.port, prepared.watch_port) if p]
            assert {c.laddr.port for c in supervisor.net_connections("inet")} & set(ports) == set()
            await agent.call(Commit(job="ports"))
            return ports
        finally:
            await agent.close()

    with node.environment():
        ports = asyncio.run(hold_then_commit())
    assert ports
    for port in ports:  # released by the agent at the commit, held by nobody else
        with socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET) as probe:
            probe.bind(("", port))


def test_a_kill_finds_the_held_supervisor_without_the_job_marker(node: LocalNode, workdir: Path) -> None:
    """Held, the supervisor is the job's only process besides the pane's ``cat``."""

    async def hold_then_kill() -> tuple[list[int], int, KillReport]:
        agent = await node.open()
        try:
            _, supervisor = await start_held(node, agent, "held", str(workdir))
            found = [p.pid for p in processes.job_processes("held")]
            killer = await node.open()
            try:
                return found, supervisor.pid, await killer.call(Kill(job="held", grace=2))
            finally:
                await killer.close()
        finally:
            await agent.close()

    with node.environment():
        found, supervisor, report = asyncio.run(hold_then_kill())

    assert supervisor in found
    assert (report.found, report.left) == (2, [])  # the supervisor and the pane's cat
    assert not os.path.exists(f"/proc/{supervisor}") or node.supervisor("held") is None


def test_a_kill_of_a_launched_job_leaves_no_supervisor(node: LocalNode, workdir: Path) -> None:
    node.jobs.add("gone")
    spec = make_spec("talk.py", ["600"], hosts="localhost", name="gone", runner="python", cwd=str(workdir))
    with node.environment():
        record = asyncio.run(launch_job(spec))
    supervisor = node.supervisor("gone")
    assert supervisor is not None

    with node.environment():
        (kill,) = asyncio.run(kill_job(record, grace=2))

    assert kill.verified, kill.message
    assert node.job_processes("gone") == []
    assert node.supervisor("gone") is None


def test_a_held_supervisor_survives_sigusr1_at_any_moment(node: LocalNode, workdir: Path) -> None:
    """The commit's SIGUSR1 goes to the process: any thread that does not block it may take
    it, and its default ends the process. The pane's watcher thread must block it (it once
    did not: a commit that came while the main thread was between two waits killed the job)."""

    async def hold_and_signal() -> bool:
        agent = await node.open()
        try:
            _, supervisor = await start_held(node, agent, "woken", str(workdir))
            until = time.monotonic() + 1.0  # without a pause: one wakes it, the next comes while it looks
            with contextlib.suppress(ProcessLookupError):
                while time.monotonic() < until:
                    os.kill(supervisor.pid, signal.SIGUSR1)
            return supervisor.is_running() and supervisor.status() != psutil.STATUS_ZOMBIE
        finally:
            await agent.close()

    with node.environment():
        assert asyncio.run(hold_and_signal())


def test_the_command_starts_with_no_signal_ignored_or_blocked_by_the_agent(node: LocalNode, workdir: Path) -> None:
    """An agent started under ``nohup`` ignores SIGHUP, and ignored signals pass through
    fork and exec: the command must start as tmux would start it, or a killed session (or
    a hang-up) would not stop it."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the local agent inherits it
    try:
        launch(node, workdir, "nohup", 600)
    finally:
        signal.signal(signal.SIGHUP, previous)
    with node.environment():
        started = RunDir.of("nohup").read_started()
    assert started is not None
    status = dict(line.split(":", 1) for line in Path(f"/proc/{started.child}/status").read_text().splitlines())
    assert int(status["SigBlk"], 16) == 0
    assert not int(status["SigIgn"], 16) & (1 << (signal.SIGHUP - 1))
