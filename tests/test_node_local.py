"""The middle layer: prepare, start, status, logs, kill and the teardown watchers through the
real node agent and supervisor, as local processes with a private tmux server and state
directory (``local_node.py``). No root, no SSH: CI runs this file as an unprivileged user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from local_node import LocalNode

from launcher import __version__
from launcher.errors import (
    JobError,
    JobRunningError,
    ScriptMissingError,
    StartFailedError,
    WorkdirMissingError,
)
from launcher.job.kill import kill_job
from launcher.job.logs import follow_logs, read_logs
from launcher.job.records import JobRecord
from launcher.job.status import job_status
from launcher.launching.spec import make_spec
from launcher.launching.start import launch_job
from launcher.protocol.base import session_name
from launcher.protocol.logs import LogBatch, LogEnd, Tail
from launcher.protocol.messages import Ended, Kill, NodeStatus, Prepare, Start, Status, Teardown, Wait

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

CHATTY = """\
import os, sys, time
print("hello from", os.environ["LAUNCHER_JOB"], flush=True)
print("to stderr", file=sys.stderr, flush=True)
time.sleep(float(os.environ.get("SLEEP", "0")))
sys.exit(int(os.environ.get("EXIT", "0")))
"""

STUBBORN = """\
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                 start_new_session=True)
print("stubborn up", flush=True)
time.sleep(600)
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "chatty.py").write_text(CHATTY)
    (tmp_path / "stubborn.py").write_text(STUBBORN)
    return tmp_path


def launch(node: LocalNode, workdir: Path, script: str, name: str, **env: str) -> JobRecord:
    node.jobs.add(name)
    spec = make_spec(script, hosts="localhost", name=name, runner="python", cwd=str(workdir), env=env)
    with node.environment():
        return asyncio.run(launch_job(spec))


def status_of(node: LocalNode, name: str) -> NodeStatus:
    return node.call(Status(job=name))


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_names_what_is_missing_with_a_typed_error(node: LocalNode, workdir: Path) -> None:
    with pytest.raises(WorkdirMissingError, match=f"localhost: working directory {workdir}/nope does not exist"):
        node.call(Prepare(job="j", cwd=str(workdir / "nope")))
    with pytest.raises(ScriptMissingError, match=f"script missing.py not found in {workdir}"):
        node.call(Prepare(job="j", cwd=str(workdir), script="missing.py"))
    prepared = node.call(Prepare(job="j", cwd=str(workdir), script="chatty.py", want_port=True))
    assert prepared.run_dir == str(node.state_dir / "launcher" / "runs" / "j" / os.uname().nodename)
    assert prepared.port and prepared.watch_port and prepared.port != prepared.watch_port


# --- start, status, logs ----------------------------------------------------------------------


def test_a_job_runs_in_the_nodes_own_tmux_server_and_ends_succeeded(node: LocalNode, workdir: Path) -> None:
    record = launch(node, workdir, "chatty.py", "chat", SLEEP="1")

    assert node.sessions() == [session_name("chat")]  # on the private server, nowhere else
    assert status_of(node, "chat").state == "running"
    assert node.call(Wait(job="chat"), timeout=30) == Ended(state="succeeded")
    with node.environment():
        lines, failures = asyncio.run(read_logs(record))
        status = asyncio.run(job_status(record))
    assert failures == {}
    # Two streams, two pump threads: their lines may interleave either way.
    assert sorted((line.stream, line.text) for line in lines if line.rank is None) == [
        ("e", "to stderr"),
        ("o", "hello from chat"),
    ]
    assert (status.state, status.hosts[0].exit_code) == ("succeeded", 0)


def test_a_failed_job_reports_its_exit_code_and_last_words(node: LocalNode, workdir: Path) -> None:
    launch(node, workdir, "chatty.py", "sad", EXIT="7")
    assert node.call(Wait(job="sad"), timeout=30) == Ended(state="failed")

    status = status_of(node, "sad")

    assert (status.state, status.exit_code) == ("failed", 7)
    assert status.failure is not None and status.failure.exit_code == 7
    assert "to stderr" in status.failure.traceback


def test_tail_and_follow_through_the_agent(node: LocalNode, workdir: Path) -> None:
    record = launch(node, workdir, "chatty.py", "tails", SLEEP="0.5")
    node.call(Wait(job="tails"), timeout=30)

    async def tail_and_follow() -> tuple[list[str], list[str]]:
        agent = await node.open()
        try:
            tailed = [
                r.text
                async for m in agent.stream(Tail(job="tails", count=1, stderr_only=True))
                if isinstance(m, LogBatch)
                for r in m.records
            ]
        finally:
            await agent.close()
        followed = [line.text async for line in follow_logs(record)]
        return tailed, followed

    with node.environment():
        tailed, followed = asyncio.run(tail_and_follow())
    assert tailed == ["to stderr"]
    assert sorted(followed) == ["hello from tails", "to stderr"]  # the job has ended: follow ends by itself


QUICK_RANKS = """\
print("\\x1e3\\x1fwarming up", flush=True)
print("\\x1e3\\x1fdone", flush=True)
print("the node's own last word", flush=True)
"""


def test_tail_finds_ranks_that_ended_before_their_environment_was_read(node: LocalNode, workdir: Path) -> None:
    # No worker process carries RANK here (the lines come prefixed, as torchrun's do, from a
    # command that ends at once): the rank is known by its output alone, and --tail must
    # still give its last line, not stop at the node's own.
    (workdir / "quick_ranks.py").write_text(QUICK_RANKS)
    launch(node, workdir, "quick_ranks.py", "quick")
    assert node.call(Wait(job="quick"), timeout=30) == Ended(state="succeeded")

    async def tail() -> list[tuple[int | None, str]]:
        agent = await node.open()
        try:
            return [
                (r.rank, r.text)
                async for m in agent.stream(Tail(job="quick", count=1))
                if isinstance(m, LogBatch)
                for r in m.records
            ]
        finally:
            await agent.close()

    with node.environment():
        tailed = asyncio.run(tail())
    assert sorted(tailed, key=str) == [(3, "done"), (None, "the node's own last word")]


def test_a_second_launch_of_a_running_job_is_refused_by_type(node: LocalNode, workdir: Path) -> None:
    launch(node, workdir, "chatty.py", "twice", SLEEP="30")

    with pytest.raises(JobError) as caught:
        launch(node, workdir, "chatty.py", "twice")

    assert isinstance(caught.value.errors["localhost"], JobRunningError)
    assert "already running here (pass --force to replace it)" in str(caught.value)
    assert status_of(node, "twice").state == "running"  # the refused launch removed nothing


def test_a_command_that_cannot_start_is_a_start_failure(node: LocalNode, workdir: Path) -> None:
    spec = make_spec("no-such-program-x", hosts="localhost", name="nostart", runner="exec", cwd=str(workdir))
    node.jobs.add("nostart")
    with node.environment(), pytest.raises(JobError) as caught:
        asyncio.run(launch_job(spec))

    assert isinstance(caught.value.errors["localhost"], StartFailedError)
    assert "cannot start no-such-program-x" in str(caught.value)
    assert node.job_processes("nostart") == []


# --- kill -------------------------------------------------------------------------------------


def test_kill_ends_a_stubborn_job_and_its_setsid_child(node: LocalNode, workdir: Path) -> None:
    record = launch(node, workdir, "stubborn.py", "stub")
    node.wait_for("the setsid child", lambda: len(node.job_processes("stub")) >= 3)

    with node.environment():
        (kill,) = asyncio.run(kill_job(record, grace=0.5))

    assert kill.verified, kill.message
    assert "needed SIGKILL" in kill.message
    assert node.job_processes("stub") == []
    assert node.sessions() == []
    assert status_of(node, "stub").state == "killed"


def test_a_kill_of_an_ended_job_says_so(node: LocalNode, workdir: Path) -> None:
    launch(node, workdir, "chatty.py", "done")
    node.call(Wait(job="done"), timeout=30)

    report = node.call(Kill(job="done", grace=1))

    assert (report.found, report.left, report.state_before) == (0, [], "succeeded")


# --- teardown, across two nodes on this machine -------------------------------------------------


def test_one_nodes_failure_stops_the_other(workdir: Path) -> None:
    """Two nodes (two state directories and tmux servers) run one job with teardown:
    node 1's command fails, node 0's supervisor hears it and stops its own command."""
    nodes = [LocalNode.create(), LocalNode.create()]
    try:
        prepared = nodes[0].call(Prepare(job="pair", cwd=str(workdir), want_port=True))
        assert prepared.watch_port is not None
        for index, (local, argv) in enumerate(
            zip(
                nodes,
                [[sys.executable, "-c", "import time; time.sleep(60)"], [sys.executable, "-c", "exit(5)"]],
                strict=True,
            )
        ):
            teardown = Teardown(node=index, address="127.0.0.1", port=prepared.watch_port, secret="5e" * 32)
            local.call(Start(job="pair", argv=argv, env={}, cwd=str(workdir), teardown=teardown))

        assert nodes[1].call(Wait(job="pair"), timeout=30) == Ended(state="failed")
        assert nodes[0].call(Wait(job="pair"), timeout=30) == Ended(state="failed")
        first = nodes[0].call(Status(job="pair"))
        assert first.stopped_by == 1
        assert nodes[1].call(Status(job="pair")).stopped_by is None
    finally:
        for local in nodes:
            local.close()


# --- versions ---------------------------------------------------------------------------------


def test_a_python_with_another_launcher_version_runs_this_ones_node_side(node: LocalNode, tmp_path: Path) -> None:
    """A ``--python`` whose launcher is another version: the node side is sent, and it wins."""
    other = tmp_path / "other-site"
    shutil.copytree(Path(__file__).resolve().parent.parent / "launcher", other / "launcher")
    version = other / "launcher" / "_version.py"
    version.write_text(version.read_text().replace(f'__version__ = "{__version__}"', '__version__ = "0.0.1"'))
    python = tmp_path / "python-other"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={other} exec {sys.executable} "$@"\n')
    python.chmod(0o755)

    async def greeted() -> tuple[str | None, str]:
        agent = await node.open(str(python))
        await agent.close()
        assert agent.hello is not None
        return agent.node_side, agent.hello.version

    with node.environment():
        assert asyncio.run(greeted()) == ("sent", __version__)
        assert asyncio.run(greeted()) == ("cached", __version__)


def test_this_layer_runs_unprivileged_where_ci_says_so() -> None:
    """``.ci/run-unprivileged`` sets LAUNCHER_TEST_UNPRIVILEGED: then this file must not run as root."""
    if os.environ.get("LAUNCHER_TEST_UNPRIVILEGED"):
        assert os.geteuid() != 0


def test_logs_of_a_job_never_run_here_are_empty(node: LocalNode) -> None:
    assert node.call(Tail(job="never", count=5)) == LogEnd(offset=0)
    assert node.call(Status(job="never")).state == "unknown"


def test_the_agent_runs_without_the_launching_side(node: LocalNode) -> None:
    """The node imports none of the launching machine's modules (nor torch, asyncssh, click, rich)."""
    code = textwrap.dedent(
        """
        import io, sys
        from launcher.node.agent import serve
        serve(io.StringIO('{"op": "status", "job": "x"}\\n'), io.StringIO())
        launching = {"launcher.transport.agent", "launcher.launching.start", "launcher.launching.spec", "launcher.cli", "launcher.job.status"}
        heavy = {"torch", "asyncssh", "click", "rich"}
        print(sorted((launching | heavy) & set(sys.modules)))
        """
    )
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, **node.env()}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- secrets: only the job's user can read its files --------------------------------------------


def modes(top: Path) -> dict[str, int]:
    """Every path under ``top`` (itself included, as ``.``) and its permission bits."""
    found = {".": stat.S_IMODE(top.stat().st_mode)}
    for path in top.rglob("*"):
        found[str(path.relative_to(top))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.usefixtures("umask_022")
def test_a_jobs_files_and_records_are_its_users_only(node: LocalNode, workdir: Path) -> None:
    # An older version's state directory, open to all: tightened by the launch.
    (node.state_dir / "launcher" / "runs").mkdir(parents=True, mode=0o755)
    (node.state_dir / "launcher").chmod(0o755)
    node.jobs.add("secret")
    spec = make_spec(
        "chatty.py",
        hosts="localhost",
        name="secret",
        runner="python",
        cwd=str(workdir),
        env={"WANDB_API_KEY": "s3cret"},
        environ={"HF_TOKEN": "hf_abc", "PATH": os.environ["PATH"]},
    )
    with node.environment():
        asyncio.run(launch_job(spec))
    assert node.call(Wait(job="secret"), timeout=30) == Ended(state="succeeded")

    top = node.state_dir / "launcher"
    run = top / "runs" / "secret" / os.uname().nodename
    spec_json = (run / "spec.json").read_text()
    assert '"s3cret"' in spec_json and '"hf_abc"' in spec_json  # what these modes protect
    found = modes(top)
    assert {"jobs/secret.json", f"runs/secret/{os.uname().nodename}/output.log"} <= set(found)
    open_to_others = {path: f"{mode:04o}" for path, mode in found.items() if mode & 0o077}
    assert open_to_others == {}
    assert {path for path, mode in found.items() if (top / path).is_dir() and mode != 0o700} == set()
    assert {path for path, mode in found.items() if (top / path).is_file() and mode != 0o600} == set()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a state directory of another user")
@pytest.mark.usefixtures("umask_022")
def test_a_nodes_state_directory_of_another_user_is_refused_naming_it(node: LocalNode, workdir: Path) -> None:
    top = node.state_dir / "launcher"
    top.mkdir(mode=0o755)
    os.chown(top, 65534, 65534)  # nobody's

    with pytest.raises(StartFailedError) as caught:
        node.call(Start(job="theirs", argv=[sys.executable, "-c", "pass"], env={"HF_TOKEN": "x"}, cwd=str(workdir)))

    assert str(caught.value).startswith(
        f"localhost: {top} is readable by other users and cannot be made private (mode 0755, owned by uid 65534"
    )
    assert modes(top) == {".": 0o755} and node.sessions() == []  # nothing written, nothing started
