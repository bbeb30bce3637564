"""The node side travels (``transport/node_side.py``): the middle layer's agent on every CPython
from 3.9 to 3.13, with nothing of launcher, psutil or libtmux installed into it, and the
bootstrap's faults (an old Python, a damaged archive, an unwritable cache, two launches at once).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from local_node import LocalNode
from test_node_pythons import VERSIONS, interpreter, python_or_skip

from launcher.errors import AgentError
from launcher.job.kill import kill_job
from launcher.job.logs import read_logs
from launcher.job.status import job_status
from launcher.launching.spec import make_spec
from launcher.launching.start import launch_job
from launcher.protocol.messages import Status
from launcher.transport.agent import SshOptions
from launcher.transport.node_side import NodeSide, agent_argv, content_digest, node_side

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

# What a rank imports of launcher (context()) and what run(fn)'s wrapper needs (cloudpickle) come
# with the node side: the job's PYTHONPATH has them.
SLEEPER = """\
import sys, time
import launcher
from launcher.node.call_function import _cloudpickle
_cloudpickle()
print("up on", sys.version_info[:2], "node", launcher.context().node_rank, flush=True)
time.sleep(600)
"""


def bare_python(version: str, where: Path) -> str:
    """A venv of ``version`` without pip: no launcher, psutil, libtmux or cloudpickle in it."""
    base = python_or_skip(version)
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = str(where / "bin" / "python")
    has = subprocess.run([python, "-c", "import psutil"], capture_output=True, timeout=60, check=False)
    assert has.returncode != 0  # truly bare
    return python


@pytest.mark.parametrize("version", VERSIONS)
def test_a_job_runs_on_a_bare_python_of_each_version(node: LocalNode, tmp_path: Path, version: str) -> None:
    python = bare_python(version, tmp_path / "venv")
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    name = f"bare{version.replace('.', '')}"
    node.jobs.add(name)
    spec = make_spec(
        "sleeper.py",
        hosts="localhost",
        name=name,
        runner="python",
        cwd=str(tmp_path),
        python=python,
        allow_mismatch=True,
    )
    ssh = SshOptions(python=python)
    with node.environment():
        record = asyncio.run(launch_job(spec))
        assert node.call(Status(job=name), python=python).state == "running", asyncio.run(read_logs(record, ssh))
        node.wait_for(
            "the job's line", lambda: any("up on" in line.text for line in asyncio.run(read_logs(record, ssh))[0])
        )
        assert asyncio.run(job_status(record, ssh)).state == "running"
        killed = asyncio.run(kill_job(record, grace=2, ssh=ssh))
    assert all(host.verified for host in killed), killed
    assert node.job_processes(name) == []
    assert [p.name for p in (node.root / "cache" / "launcher" / "node").iterdir()] == [node_side().digest]


def run_bootstrap(python: str, cache: Path, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(agent_argv(python), input=stdin, capture_output=True, env=env, timeout=120, check=False)


def framed(archive: bytes) -> bytes:
    """As the launching side sends it: a line with its size, then the bytes."""
    return b"%d\n" % len(archive) + archive


def bare_or_skip(tmp_path: Path) -> str:
    for version in ("3.10", "3.9", "3.12", "3.13"):
        if interpreter(version):
            return bare_python(version, tmp_path / "venv")
    pytest.skip("no Python but this one here")


def test_a_damaged_archive_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    python = bare_or_skip(tmp_path)
    data = bytearray(node_side().archive)
    data[len(data) // 2] ^= 0xFF
    done = run_bootstrap(python, tmp_path / "cache", framed(bytes(data)))
    first, second = done.stdout.decode().splitlines()[:2]
    assert '"need"' in first and '"damaged"' in second and done.returncode == 4
    assert list((tmp_path / "cache" / "launcher" / "node").iterdir()) == []


def test_what_a_killed_unpack_left_a_day_ago_is_removed_by_the_next(tmp_path: Path) -> None:
    python = bare_or_skip(tmp_path)
    base = tmp_path / "cache" / "launcher" / "node"
    stale, fresh = base / ".0123456789abcdef.stale", base / ".0123456789abcdef.fresh"
    for left in (stale, fresh):
        (left / "lib").mkdir(parents=True)
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    done = run_bootstrap(python, tmp_path / "cache", framed(node_side().archive))
    assert b'"launcher_boot": "run"' in done.stdout, done.stderr
    assert sorted(p.name for p in base.iterdir()) == sorted([fresh.name, node_side().digest])  # fresh: in use


def test_an_unwritable_cache_is_one_line_naming_it(tmp_path: Path) -> None:
    python = bare_or_skip(tmp_path)
    (tmp_path / "file").write_text("")
    done = run_bootstrap(python, tmp_path / "file", b"")
    assert done.returncode == 5 and b'"cache"' in done.stdout and b"Not a directory" in done.stdout


def test_two_launches_filling_the_cache_at_once_leave_one_copy(tmp_path: Path) -> None:
    python = bare_or_skip(tmp_path)
    archive = framed(node_side().archive)
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda _: run_bootstrap(python, tmp_path / "cache", archive), range(2)))
    for each in done:  # the agent ran (then stdin ended): the greeting follows the bootstrap's line
        assert b'"launcher_boot": "run"' in each.stdout and b'"hostname"' in each.stdout, each.stderr
    assert [p.name for p in (tmp_path / "cache" / "launcher" / "node").iterdir()] == [node_side().digest]


def test_a_python_older_than_3_9_is_one_line_naming_the_host(node: LocalNode) -> None:
    old = interpreter("3.8") or interpreter("3.7")
    if old is None:
        pytest.skip("no Python older than 3.9 here")
    with pytest.raises(AgentError, match=r"^localhost: its Python is 3\.[78]\.\d+: the node side needs Python 3\.9"):
        node.call(Status(job="x"), python=old)
    assert not (node.root / "cache").exists()


def test_the_archive_is_the_same_bytes_each_time() -> None:
    first = node_side()
    again = NodeSide(files=dict(first.files), digest=content_digest(first.files), psutil_build=first.psutil_build)
    assert (again.digest, again.archive) == (first.digest, first.archive)


def test_no_psutil_that_fits_is_one_line_saying_what_to_install(tmp_path: Path) -> None:
    """The job's Python has no psutil and this machine's build is for another architecture."""
    python = bare_or_skip(tmp_path)
    argv = agent_argv(python)
    argv[-2] = "linux-riscv64"  # the psutil build's tag, as another launching machine would send it
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        argv, input=framed(node_side().archive), capture_output=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 6 and b'"launcher_boot": "psutil"' in done.stdout and b"hostname" not in done.stdout


def test_what_the_bootstrap_says_becomes_one_line_naming_the_host(node: LocalNode, tmp_path: Path) -> None:
    python = bare_or_skip(tmp_path)
    (tmp_path / "file").write_text("")
    with (
        node.environment(),
        pytest.raises(AgentError, match=r"^localhost: cannot write the node side's cache .*/file/"),
    ):
        os.environ["XDG_CACHE_HOME"] = str(tmp_path / "file")
        asyncio.run(node.open(python))


def test_doctor_says_how_each_hosts_node_side_came_and_on_which_python(node: LocalNode, tmp_path: Path) -> None:
    from launcher.cli.doctor import row_cells
    from launcher.doctor.checks import run_doctor
    from launcher.hosts.files import LOCALHOST

    python = bare_or_skip(tmp_path)
    seen = []
    with node.environment():
        for _ in range(2):
            check = asyncio.run(run_doctor([LOCALHOST], SshOptions(python=python), str(tmp_path))).hosts[0]
            said = [f.message for f in check.findings if f.check == "launcher"]
            seen.append((check.node_side, said, row_cells(check)[3].split()[-1]))
    assert [(mode, cell) for mode, _, cell in seen] == [("sent", "sent"), ("cached", "cached")]
    assert seen[0][1] == [f"launcher's node side sent from here on {python}"]
