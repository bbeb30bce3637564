"""``launcher stack`` without a cluster: stacks read (pure), the roll-call, the node's handler
on real local processes with py-spy and with the faulthandler fallback, the startup hook."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.cli.stack import roll_call_lines
from launcher.job.stack import describe, roll_call
from launcher.launching.commands import job_env
from launcher.node import stack, stack_frames
from launcher.node.rundir import RunDir
from launcher.node.start import STARTUP_HOOK, ranks_pythonpath
from launcher.protocol.base import JOB_MARKER, RUN_DIR_VARIABLE
from launcher.protocol.python_env import NODE_FALLBACK_VARIABLE
from launcher.protocol.stack import Frame, RankStack, StackReport, TakeStacks
from launcher.transport.node_side import node_side

STDLIB = sysconfig.get_paths()["stdlib"]
TORCH = "/venv/lib/python3.11/site-packages/torch/distributed"
FAULTHANDLER_TEXT = f"""Thread 0x00007f0000000001 (most recent call first):
  File "{STDLIB}/threading.py", line 320 in wait
  File "{STDLIB}/threading.py", line 1002 in _bootstrap

Current thread 0x00007f0000000002 (most recent call first):
  File "{TORCH}/distributed_c10d.py", line 2501 in all_reduce
  File "{TORCH}/c10d_logger.py", line 81 in wrapper
  File "/home/u/train.py", line 9 in train_step
  File "/home/u/train.py", line 20 in <module>
"""


def test_faulthandler_text_gives_the_main_thread_and_its_place_in_user_code() -> None:
    threads = stack_frames.threads_of_faulthandler(FAULTHANDLER_TEXT)
    assert [len(frames) for _, frames in threads] == [2, 4]
    user, library = stack_frames.place(stack_frames.main_thread(threads))
    assert user == Frame("train_step", "train.py", 9)
    # torch's logging wrapper is skipped for the innermost frame of the same package
    assert library == Frame("all_reduce", "torch/distributed/distributed_c10d.py", 2501)
    assert describe(user, library) == ("train_step (train.py:9) -> all_reduce (torch/distributed/distributed_c10d.py)")


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([], "no Python frame"),
        ([Frame("f", "/home/u/a b/t.py", 5)], "f (t.py:5)"),
        ([Frame("time_sleep", "libpython3.11.so", None), Frame("f", "/home/u/t.py", 5)], "f (t.py:5) -> time_sleep"),
        ([Frame("select", f"{STDLIB}/selectors.py", 4)], "select (selectors.py)"),
    ],
)
def test_places_described(frames: list[Frame], expected: str) -> None:
    assert describe(*stack_frames.place(frames)) == expected


def _rank(host: str, rank: int, where: str) -> RankStack:
    return RankStack(rank, 100 + rank, "py-spy", Frame(where, "train.py", 9), None, f"/s/rank-{rank}.txt")


def test_roll_call_groups_the_largest_first_and_names_the_odd_rank() -> None:
    reports: list[tuple[str, StackReport | str]] = [
        ("h0", StackReport("h0", [_rank("h0", 0, "train_step"), _rank("h0", 1, "train_step")], "/s")),
        ("h1", StackReport("h1", [_rank("h1", 2, "train_step"), RankStack(3, error="it ended")], "/s")),
        ("h2", StackReport("h2", [_rank("h2", 4, "load_batch"), _rank("h2", 5, "train_step")], "/s")),
        ("h3", "cannot connect"),
    ]
    call = roll_call("job", reports)
    assert [len(g.ranks) for g in call.groups] == [4, 1]
    assert (call.taken, call.total) == (5, 6)
    lines = roll_call_lines(call)
    assert lines[0] == "4 of 6 ranks in train_step (train.py:9)"
    assert lines[1] == "rank 4 on h2 elsewhere: load_batch (train.py:9)"
    assert "rank 3 on h1: no stack: it ended" in lines
    assert "h3: no stack: cannot connect" in lines
    assert "full stacks of rank 4: h2:/s/rank-4.txt" in lines


def test_the_node_puts_its_own_startup_hook_first_and_keeps_the_users_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NODE_FALLBACK_VARIABLE, raising=False)
    assert ranks_pythonpath(None) == STARTUP_HOOK
    assert ranks_pythonpath("/mine:/more") == f"{STARTUP_HOOK}:/mine:/more"
    assert ranks_pythonpath(f"{STARTUP_HOOK}:/mine") == f"{STARTUP_HOOK}:/mine"
    assert (Path(STARTUP_HOOK) / "sitecustomize.py").is_file()
    # The launching side leaves it to the node: its own path means nothing on another host.
    assert "PYTHONPATH" not in job_env({}, "/l")
    assert job_env({"PYTHONPATH": "/mine"}, "/l")["PYTHONPATH"] == "/mine"


def test_a_sent_node_side_carries_the_startup_hook() -> None:
    assert "lib/launcher/startup/sitecustomize.py" in node_side().files


SLEEPER = """
import time
def load_batch_forever():
    while True:
        time.sleep(0.2)
print("ready", flush=True)
load_batch_forever()
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunDir:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("LAUNCHER_STACK_METHOD", raising=False)
    run = RunDir.of("stackjob")
    run.reset()
    run.write_ranks([0, 1])
    return run


@pytest.fixture
def ranks(run_dir: RunDir, tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Two ranks of job ``stackjob`` (a third process with RANK is rank 1's child, no rank)
    started through the startup hook, and a user sitecustomize it must chain to."""
    user_site = tmp_path / "user-site"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text("import os\nos.environ['USER_SITE_RAN'] = '1'\n")
    script = tmp_path / "train.py"
    script.write_text(SLEEPER + "")
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            JOB_MARKER: "stackjob",
            RUN_DIR_VARIABLE: str(run_dir.path),
            "RANK": str(rank),
            "PYTHONPATH": f"{STARTUP_HOOK}:{user_site}",
        }
        code = f"import os; assert os.environ['USER_SITE_RAN'] == '1'; import runpy; runpy.run_path({str(script)!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True))
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("method", ["py-spy", "faulthandler"])
def test_the_node_takes_every_ranks_stack_and_saves_it_privately(
    ranks: list[subprocess.Popen[str]], run_dir: RunDir, method: str
) -> None:
    if method == "py-spy" and stack.py_spy_path() is None:
        pytest.skip("py-spy is not installed")
    report = stack.take_stacks(TakeStacks(job="stackjob", method=method))  # type: ignore[arg-type]
    assert report.error is None
    assert [r.rank for r in report.ranks] == [0, 1]
    for rank, proc in zip(report.ranks, ranks, strict=True):
        assert rank.error is None, rank.error
        assert (rank.pid, rank.method) == (proc.pid, method)
        assert rank.user is not None and rank.user.function == "load_batch_forever", rank
        assert rank.path is not None and Path(rank.path).read_text() == rank.text
        assert os.stat(rank.path).st_mode & 0o777 == 0o600
        assert os.stat(Path(rank.path).parent).st_mode & 0o777 == 0o700
    assert all(proc.poll() is None for proc in ranks), "taking a stack must not end a rank"


def test_a_rank_that_ended_is_named_and_the_others_still_answer(
    ranks: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ranks[1].kill()
    ranks[1].wait()
    monkeypatch.setenv("LAUNCHER_STACK_METHOD", "faulthandler")
    report = stack.take_stacks(TakeStacks(job="stackjob"))
    by_rank = {r.rank: r for r in report.ranks}
    assert by_rank[0].method == "faulthandler" and by_rank[0].error is None
    assert by_rank[1].error is not None and "ended" in by_rank[1].error


def test_a_process_without_the_hook_is_never_signalled(run_dir: RunDir) -> None:
    env = {**os.environ, JOB_MARKER: "stackjob", RUN_DIR_VARIABLE: str(run_dir.path), "RANK": "0"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        deadline = time.monotonic() + 30
        while not stack.rank_processes("stackjob") and time.monotonic() < deadline:
            time.sleep(0.05)
        report = stack.take_stacks(TakeStacks(job="stackjob", method="faulthandler"))
        assert report.ranks[0].error is not None and "not armed" in report.ranks[0].error
        assert proc.poll() is None  # the signal would have killed it
    finally:
        proc.kill()
        proc.wait()


def test_the_full_stacks_are_shown_in_one_line_when_every_host_used_the_same_path() -> None:
    def on(host: str, label: str) -> tuple[str, StackReport | str]:
        return (host, StackReport(host, [_rank(host, 0, "f")], f"/s/runs/j/{host}/stacks/{label}"))

    same = roll_call("j", [on("h0", "t1"), on("h1", "t1")])
    assert same.directories_shown() == ["/s/runs/j/<host>/stacks/t1 on each of h0, h1"]
    mixed = roll_call("j", [on("h0", "t1"), on("h1", "t2")])
    assert mixed.directories_shown() == ["/s/runs/j/h0/stacks/t1 on h0", "/s/runs/j/h1/stacks/t2 on h1"]


def test_the_node_names_the_stacks_directory_as_asked_and_only_plainly(
    ranks: list[subprocess.Popen[str]], run_dir: RunDir
) -> None:
    named = stack.take_stacks(TakeStacks(job="stackjob", method="faulthandler", label="20260101-000000-7"))
    assert named.directory == str(run_dir.path / "stacks" / "20260101-000000-7")
    sneaky = stack.take_stacks(TakeStacks(job="stackjob", method="faulthandler", label="../../escape"))
    assert sneaky.directory is not None and Path(sneaky.directory).parent == run_dir.path / "stacks"
