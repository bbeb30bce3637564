"""The blocking Python API (``launcher.launch``, ``run``, ``submit``, ``Job``) on the middle layer:
real agents, supervisors and torchrun on localhost, with a private state directory and tmux
server (``local_node.py``). No root, no SSH.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import api_functions
import psutil
import pytest
from local_node import LocalNode

import launcher
from launcher.errors import JobFailed, JobNotFoundError, JobTimeoutError, NotPicklableError, UsageError
from launcher.node.rundir import RunDir

TESTS = Path(__file__).resolve().parent
SCRIPTS = TESTS / "scripts"

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/tmux"), reason="needs tmux")


@pytest.fixture
def node() -> Iterator[LocalNode]:
    local = LocalNode.create()
    try:
        with local.environment():
            yield local
    finally:
        local.close()


def run_here(fn: object, *args: object, **options: object) -> dict[int, object]:
    """``launcher.run`` on localhost, with this directory as the job's cwd (so ranks import api_functions)."""
    return launcher.run(fn, *args, hosts="localhost", cwd=str(TESTS), **options)  # type: ignore[arg-type]


def assert_nothing_left_behind(threads_before: set[threading.Thread]) -> None:
    """No thread and no child process of ours outlives a call (asyncio's waitpid helper
    thread ends a moment after the agent it waited for). Children that were there before
    the test (a test cluster's hosts, started by an earlier test of the session) don't count."""
    deadline = time.monotonic() + 5
    while (threads := set(threading.enumerate()) - threads_before) or _new_children():
        assert time.monotonic() < deadline, (threads, _new_children())
        time.sleep(0.05)


_CHILDREN_AT_START: set[int] = set()


@pytest.fixture(autouse=True)
def _note_children() -> None:
    _CHILDREN_AT_START.clear()
    _CHILDREN_AT_START.update(child.pid for child in psutil.Process().children())


def _new_children() -> list[psutil.Process]:
    return [child for child in psutil.Process().children() if child.pid not in _CHILDREN_AT_START]


# --- launch(), Job -------------------------------------------------------------------------------


def test_launch_wait_logs_get_and_jobs(node: LocalNode, tmp_path: Path) -> None:
    out = tmp_path / "echo.json"
    job = launcher.launch(
        str(SCRIPTS / "echo_args.py"),
        "a b",
        "$(x)",
        7,
        nproc_per_node=2,
        name="api-echo",
        cwd=str(TESTS),
        env={"ECHO_ARGS_OUT": str(out)},
        assignments=["FROM_ASSIGNMENT=1"],
    )

    assert (job.name, job.hosts) == ("api-echo", ("localhost",))
    result = job.wait(timeout=120)
    assert result.ok and result.state == "succeeded"
    echoed = json.loads(out.read_text())
    assert echoed["argv"] == ["a b", "$(x)", "7"]
    assert echoed["env"]["FROM_ASSIGNMENT"] == "1" and echoed["env"]["OMP_NUM_THREADS"] == "1"
    assert echoed["env"]["PATH"] == os.environ["PATH"]  # forwarded, as the CLI forwards it
    assert [(r.rank, r.state, r.exit_code) for r in result.ranks.values()] == [(0, "succeeded", 0), (1, "succeeded", 0)]
    lines = list(job.logs())
    assert {line.rank for line in lines if line.rank is not None} == {0, 1}
    assert all(line.host == "localhost" for line in lines)
    assert {line.rank for line in job.logs(rank=1)} <= {1, None}
    assert found_again(job)
    assert "api-echo" in [j.name for j in launcher.jobs()]
    assert list(job.logs(follow=True))  # ends by itself: the job has ended
    with pytest.raises(UsageError, match="not a host of api-echo"):
        job.logs(host="elsewhere")
    with pytest.raises(UsageError, match="runs a script"):
        job.result()


def found_again(job: launcher.Job) -> bool:
    found = launcher.Job.get(job.name)
    return found.name == job.name and found.hosts == job.hosts and found.status().state == "succeeded"


def test_get_of_an_unknown_job(node: LocalNode) -> None:
    with pytest.raises(JobNotFoundError, match="no-such-job"):
        launcher.Job.get("no-such-job")


def test_wait_times_out_then_a_kill_ends_the_wait(node: LocalNode) -> None:
    job = launcher.launch(str(SCRIPTS / "ticker.py"), nproc_per_node=1, name="api-ticker", cwd=str(TESTS))
    started = time.monotonic()
    with pytest.raises(JobTimeoutError, match="still runs after 1 s") as raised:
        job.wait(timeout=1)
    assert isinstance(raised.value, TimeoutError) and time.monotonic() - started < 30
    assert job.status().state == "running"

    before = set(threading.enumerate())
    for line in job.logs(follow=True):
        assert "ticker tick=" in line.text or line.rank is None
        break  # leaving early closes the follower
    assert_nothing_left_behind(before)

    kills = job.kill(grace=2)

    assert all(k.verified for k in kills), kills
    result = job.wait(timeout=30)  # a killed job: its state, at once
    assert result.state == "killed" and not result.ok
    assert node.job_processes("api-ticker") == []


def test_a_failing_rank_is_the_root_cause(node: LocalNode) -> None:
    job = launcher.launch(
        str(SCRIPTS / "fail_rank.py"), nproc_per_node=2, name="api-fail", cwd=str(TESTS), env={"FAIL_RANK": "1"}
    )
    with pytest.raises(JobFailed) as raised:
        job.wait(timeout=120)

    failed = raised.value
    assert (failed.job, failed.host, failed.rank) == ("api-fail", "localhost", 1)
    assert failed.result is not None and failed.result.state == "failed"
    assert "localhost rank 1" in str(failed) and "\n" not in str(failed)


def test_launch_is_the_function_even_after_the_async_launch_is_imported() -> None:
    from launcher.launching.start import launch_job  # the async launch lives in its own module

    assert callable(launcher.launch) and launcher.launch.__module__ == "launcher.api.blocking"
    assert launch_job is launcher.launch_job


def test_functions_naming_the_package_pickle() -> None:
    """A function that names ``launcher`` among its globals travels (the package pickles by name)."""
    import cloudpickle

    assert cloudpickle.loads(cloudpickle.dumps(lambda: launcher.context().world_size))() == 1


# --- run(), submit() -----------------------------------------------------------------------------


def test_run_returns_every_ranks_value(node: LocalNode) -> None:
    before = set(threading.enumerate())
    values = run_here(api_functions.where_am_i, 10, nproc_per_node=2, fn_kwargs={"offset": 1})

    assert sorted(values) == [0, 1]
    for rank, value in values.items():
        assert value["rank"] == value["env_rank"] == rank  # type: ignore[index]
        assert value["world_size"] == 2 and value["value"] == rank * 10 + 1  # type: ignore[index]
    assert_nothing_left_behind(before)


def test_a_closure_travels_by_value_and_all_reduce_works_inside(node: LocalNode) -> None:
    bonus = 100

    def reduce_and_add() -> tuple[int, float]:
        rank, total = api_functions.all_reduce_rank()
        return rank, total + bonus

    values = run_here(reduce_and_add, nproc_per_node=2)

    assert values == {0: (0, 103.0), 1: (1, 103.0)}


def test_an_exception_on_a_rank_names_host_rank_and_traceback(node: LocalNode) -> None:
    with pytest.raises(JobFailed) as raised:
        run_here(api_functions.fail_on_rank, 1, nproc_per_node=2, name="api-raise")

    failed = raised.value
    assert (failed.host, failed.rank, failed.exception) == ("localhost", 1, "ValueError: rank 1 refuses")
    assert any("api_functions.py" in line and "fail_on_rank" in line for line in failed.traceback), failed.traceback
    assert failed.traceback[-1] == "ValueError: rank 1 refuses"
    assert "remote traceback (localhost rank 1)" in failed.__notes__[0]
    # Rank 0 was waiting in a barrier for rank 1: the teardown stopped it.
    assert node.job_processes("api-raise") == []
    assert launcher.Job.get("api-raise").status().state == "failed"


def test_unpicklable_inputs_fail_before_anything_starts(node: LocalNode) -> None:
    lock = threading.Lock()
    with pytest.raises(NotPicklableError, match=r"cannot pickle args\[1\] \(a lock\)"):
        run_here(api_functions.sleep_for, 1, lock)
    with pytest.raises(NotPicklableError, match=r"keyword argument 'offset'"):
        run_here(api_functions.where_am_i, 1, fn_kwargs={"offset": lock})
    with pytest.raises(NotPicklableError, match=r"the function .*uses_lock"):

        def uses_lock() -> bool:
            return lock.locked()

        run_here(uses_lock)
    assert launcher.jobs() == []
    assert not (node.state_dir / "launcher" / "runs").exists()


def test_an_unpicklable_return_value_names_the_rank(node: LocalNode) -> None:
    with pytest.raises(JobFailed, match=r"rank 0: the return value of rank 0 cannot be pickled") as raised:
        run_here(api_functions.unpicklable_result, nproc_per_node=1)
    assert raised.value.rank == 0


def test_big_values_come_back_in_several_answers_up_to_the_limit(node: LocalNode) -> None:
    values = run_here(api_functions.big_value, {0: 5, 1: 5}, nproc_per_node=2)  # 10 MiB: two answers
    assert {rank: (len(v), set(v)) for rank, v in values.items()} == {0: (5 << 20, {0}), 1: (5 << 20, {1})}  # type: ignore[arg-type]

    with pytest.raises(
        JobFailed, match=r"rank 1: the return value of rank 1 is 9\.0 MiB pickled, over the 8 MiB limit"
    ):
        run_here(api_functions.big_value, {0: 0, 1: 9}, nproc_per_node=2)


def test_results_are_read_within_a_budget(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for rank in (2, 0, 1):
        run.write_result(rank, bytes(600))
    assert run.read_results(budget=1000) == ({0: bytes(600)}, True)
    assert run.read_results(skip={0}, budget=1200) == ({1: bytes(600), 2: bytes(600)}, False)
    assert run.read_results(skip={0, 1, 2}) == ({}, False)


def test_the_node_side_imports_neither_cloudpickle_nor_torch() -> None:
    code = (
        "import sys, launcher.node.agent, launcher.node.results, launcher.node.start;"
        "print(sorted({'cloudpickle', 'torch'} & {m.partition('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_submit_then_result_and_a_timeout_that_kills(node: LocalNode) -> None:
    job = launcher.submit(api_functions.sleep_for, 0.1, hosts="localhost", cwd=str(TESTS), nproc_per_node=2)
    assert job.is_function and job.name.startswith("sleep_for-")
    assert job.result(timeout=120) == {0: 0.1, 1: 0.1}
    assert launcher.Job.get(job.name).result() == {0: 0.1, 1: 0.1}  # found again, from its record

    with pytest.raises(JobTimeoutError):
        run_here(api_functions.sleep_for, 600, name="api-slow", timeout=3)
    assert launcher.Job.get("api-slow").status().state == "killed"
    assert node.job_processes("api-slow") == []


def test_run_inside_a_running_event_loop(node: LocalNode) -> None:
    """As in a notebook cell: the caller's loop is running, so the call runs on a private
    loop in a worker thread, which is gone once it returns."""
    before = set(threading.enumerate())

    async def cell() -> tuple[dict[int, object], str]:
        values = run_here(api_functions.where_am_i, 3, nproc_per_node=1)
        job = launcher.Job.get(launcher.jobs()[-1].name)
        lines = [line.text for line in job.logs(follow=True)]
        await asyncio.sleep(0)  # the caller's loop is still usable
        return values, job.wait().state + f" {len(lines)}"

    values, state = asyncio.run(cell())

    assert values[0]["value"] == 0 and state.startswith("succeeded")  # type: ignore[index]
    assert_nothing_left_behind(before)
