"""The middle layer: node 0's rendezvous and teardown watch ports are held by its agent from
the prepare until the command runs (the commit), so that no other process takes them
between their choice and their use (``local_node.py``: the real agent and supervisor)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from local_node import LocalNode

from launcher.protocol.base import RENDEZVOUS_ADDRESS
from launcher.protocol.messages import Commit, Ended, Kill, KillReport, Prepare, Start, Teardown, Wait

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


def taken(port: int) -> bool:
    """Whether another process's bind to ``port`` fails (as another program's would)."""
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    try:
        socket.create_server(("", port), family=family, dualstack_ipv6=family == socket.AF_INET6).close()
    except OSError:
        return True
    return False


def test_the_ports_are_held_from_the_prepare_until_the_commit(tmp_path: Path) -> None:
    node = LocalNode.create()
    seen: dict[str, list[bool]] = {}

    async def launch() -> Ended:
        agent = await node.open()
        try:
            prepared = await agent.call(Prepare(job="ports", cwd=str(tmp_path), want_port=True))
            assert prepared.port is not None and prepared.watch_port is not None
            ports = [prepared.port, prepared.watch_port]
            seen["prepared"] = [taken(p) for p in ports]
            teardown = Teardown(node=0, address="127.0.0.1", port=prepared.watch_port, secret="5e" * 32, nodes=1)
            argv = [sys.executable, "-c", "print('ran')"]
            await agent.call(Start(job="ports", argv=argv, env={}, cwd=str(tmp_path), teardown=teardown, hold=60.0))
            seen["started"] = [taken(p) for p in ports]
            await agent.call(Commit(job="ports"))
            ended = await agent.call(Wait(job="ports"), timeout=60)
            logged = b"".join(f.read_bytes() for f in Path(prepared.run_dir).rglob("*") if f.is_file())
            assert b"cannot listen" not in logged and b"ran" in logged  # the watcher bound its port
            return ended
        finally:
            await agent.close()

    try:
        node.jobs.add("ports")
        with node.environment():
            ended = asyncio.run(launch())
    finally:
        node.close()
    assert seen == {"prepared": [True, True], "started": [True, True]}
    assert ended == Ended(state="succeeded")


@pytest.mark.parametrize(("address", "endpoint"), [("10.1.2.3", "10.1.2.3:29500"), ("fd00::7", "[fd00::7]:29500")])
def test_the_commit_brings_the_rendezvous_address_into_the_held_command(
    tmp_path: Path, address: str, endpoint: str
) -> None:
    """A host starts as soon as it is prepared, before the rendezvous address is known; its
    commit puts the address in the command, its variables and its teardown address."""
    node = LocalNode.create()
    show = "import os, sys; print('argv', sys.argv[1], 'env', os.environ['MASTER_ADDR'], os.environ['IFNAME'])"

    async def launch() -> tuple[Ended, str, str, str]:
        agent = await node.open()
        try:
            argv = [sys.executable, "-c", show, f"{RENDEZVOUS_ADDRESS}:29500"]
            env = {"MASTER_ADDR": RENDEZVOUS_ADDRESS}
            teardown = Teardown(node=1, address=RENDEZVOUS_ADDRESS, port=1, secret="", nodes=2)
            started = await agent.call(
                Start(job="meet", argv=argv, env=env, cwd=str(tmp_path), teardown=teardown, hold=60.0)
            )
            spec = Path(started.run_dir, "spec.json").read_text()
            await agent.call(Commit(job="meet", address=address, env={"IFNAME": "eth7"}))
            ended = await agent.call(Wait(job="meet"), timeout=60)
            completed = Path(started.run_dir, "spec.json").read_text()
            return ended, spec, completed, Path(started.run_dir, "output.log").read_text()
        finally:
            await agent.close()

    try:
        node.jobs.add("meet")
        with node.environment():
            ended, held, after, log = asyncio.run(launch())
    finally:
        node.close()
    assert ended == Ended(state="succeeded")
    before = json.loads(held)
    assert before["argv"][-1] == f"{RENDEZVOUS_ADDRESS}:29500" and before["env"]["MASTER_ADDR"] == RENDEZVOUS_ADDRESS
    completed = json.loads(after)
    assert completed["argv"][-1] == endpoint and completed["env"]["MASTER_ADDR"] == address
    assert completed["teardown"]["address"] == address and completed["env"]["IFNAME"] == "eth7"
    assert f"argv {endpoint} env {address} eth7" in log, log


@pytest.mark.parametrize("forget", [True, False])
def test_a_rolled_back_launch_leaves_no_run_directory(tmp_path: Path, forget: bool) -> None:
    """A launch that fails after some hosts started (held) removes them: ``Kill(forget=True)``
    takes the run directory of a job that never ran too; a user's kill keeps it (its logs)."""
    node = LocalNode.create()

    async def launch() -> tuple[str, KillReport]:
        agent = await node.open()
        try:
            argv = [sys.executable, "-c", "print('never')"]
            started = await agent.call(Start(job="back", argv=argv, env={}, cwd=str(tmp_path), hold=60.0))
            report = await agent.call(Kill(job="back", grace=1.0, forget=forget), timeout=60)
            return started.run_dir, report
        finally:
            await agent.close()

    try:
        node.jobs.add("back")
        with node.environment():
            run_dir, report = asyncio.run(launch())
        assert report.left == [] and report.found >= 1
        assert Path(run_dir).exists() is not forget
        assert Path(run_dir).parent.exists() is not forget  # the job's directory, its lock file with it
    finally:
        node.close()
