"""``launch --hang-timeout`` without a cluster: the option, the job's variables, what counts
as a sign of life (a line, a heartbeat), the hang record, and the teardown lines it adds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from nccl_pipe import answer_dump_requests

from launcher.errors import UsageError
from launcher.job.status import HostStatus, JobStatus, RankStatus, RootCause, same_failure, silent_ranks
from launcher.launching.spec import hang_env, parse_duration
from launcher.node import hang
from launcher.node.rundir import RunDir
from launcher.protocol.base import JOB_MARKER, RUN_DIR_VARIABLE
from launcher.protocol.messages import RankFailure
from launcher.protocol.stack import Frame, RankStack, StackReport
from launcher.run_context import context


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("120", 120), ("2.5", 2.5), (" 5M ", 300)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--hang-timeout") == seconds


@pytest.mark.parametrize("text", ["", "s", "ten", "5d", "0", "-3m", "0.5", "31d", "1e9", "$(reboot)"])
def test_bad_durations_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--hang-timeout"):
        parse_duration(text, "--hang-timeout")


def test_hang_env() -> None:
    assert hang_env(None, "stop") == {}
    assert hang_env("10m", "keep") == {"LAUNCHER_HANG_TIMEOUT": "600", "LAUNCHER_ON_HANG": "keep"}
    with pytest.raises(UsageError, match="--on-hang keep needs --hang-timeout"):
        hang_env(None, "keep")
    assert hang.hang_settings({"LAUNCHER_HANG_TIMEOUT": "600", "LAUNCHER_ON_HANG": "keep"}) == (600.0, True)
    assert hang.hang_settings({}) == (None, False)
    assert hang.hang_settings({"LAUNCHER_HANG_TIMEOUT": "junk"}) == (None, False)


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.reset()
    return run


def test_a_heartbeat_counts_as_a_line(run: RunDir, monkeypatch: pytest.MonkeyPatch) -> None:
    activity = hang.Activity(run)
    started = activity.last()
    time.sleep(0.05)
    monkeypatch.setenv(RUN_DIR_VARIABLE, str(run.path))
    env = {JOB_MARKER: "j", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    context(env).heartbeat()
    beat = run.path / "heartbeats" / "rank-3"
    assert beat.is_file() and os.stat(beat).st_mode & 0o777 == 0o600
    assert activity.last() > started
    later = activity.last()
    time.sleep(0.05)
    activity.line()
    assert activity.last() > later


def test_a_heartbeat_outside_launcher_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RUN_DIR_VARIABLE, raising=False)
    context({"RANK": "0", "WORLD_SIZE": "1"}).heartbeat()
    assert list(tmp_path.iterdir()) == []


def test_the_hang_record_keeps_the_places_without_the_full_text(run: RunDir) -> None:
    report = StackReport("h0", [RankStack(0, 9, "py-spy", Frame("f", "t.py", 3), None, "/s/rank-0.txt", "long")], "/s")
    hang.record_hang(run, report, 100.0, 30.0, kept=False)
    record = hang.read_hang(run)
    assert record is not None and (record.last_output, record.timeout, record.kept) == (100.0, 30.0, False)
    assert record.stacks.ranks[0].text == "" and record.stacks.ranks[0].user == Frame("f", "t.py", 3)
    assert os.stat(run.path / hang.HANG_FILE).st_mode & 0o777 == 0o600


def test_node_0_calls_the_job_hung_once_every_node_is_silent(run: RunDir) -> None:
    class Peers:
        def __init__(self) -> None:
            self.output = [time.time() + 3600.0]  # a node whose ranks keep printing
            self.announced: list[float] = []

        def peers_output(self) -> list[float]:
            return self.output

        def announce_hang(self, last: float) -> None:
            self.announced.append(last)

        def wait_stacked(self, timeout: float) -> None:
            pass

    peers, notes, stopped = Peers(), [], []
    taken = StackReport("h0", [], "/s")
    watch = hang.HangWatch(
        run, "j", 1.0, False, hang.Activity(run), notes.append, lambda: stopped.append(1), lambda r: taken
    )
    watch.watch(peers)
    time.sleep(2.5)
    assert not watch.hung and peers.announced == []  # node 1 still prints: no hang
    peers.output = [time.time() - 5]
    deadline = time.monotonic() + 20
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watch.hung and len(peers.announced) == 1 and stopped == [1]
    assert any("the job is hung" in note for note in notes)
    assert hang.read_hang(run) is not None


def test_on_hang_keep_records_the_hang_and_stops_nothing(run: RunDir) -> None:
    notes: list[str] = []
    stopped: list[int] = []
    taken = StackReport("h0", [], "/s")
    watch = hang.HangWatch(
        run, "j", 1.0, True, hang.Activity(run), notes.append, lambda: stopped.append(1), lambda r: taken
    )
    watch.watch(None)  # alone: no teardown channel
    deadline = time.monotonic() + 20
    while not any("left running" in note for note in notes) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert watch.hung and stopped == []
    record = hang.read_hang(run)
    assert record is not None and record.kept


def _job(printed: dict[int, float | None]) -> JobStatus:
    ranks = tuple(RankStatus(rank, "running") for rank in printed)
    times = {str(rank): when for rank, when in printed.items() if when is not None}
    return JobStatus(
        "j",
        "running",
        (
            HostStatus("h0", "running", ranks=ranks[:2], last_printed=times),
            HostStatus("h1", "running", ranks=ranks[2:], last_printed=times),
        ),
    )


@pytest.mark.parametrize(
    ("printed", "flagged"),
    [
        ({0: 998, 1: 997, 2: 999, 3: 400}, [("h1", 3)]),  # 600 s against peers' 2 s
        ({0: 998, 1: 997, 2: 999, 3: 960}, []),  # 40 s: under a minute
        ({0: 998, 1: None, 2: None, 3: None}, []),  # only rank 0 prints: nobody to compare with
        ({0: 100, 1: 200, 2: 150, 3: 120}, []),  # all silent alike (a hang, not one slow rank)
    ],
)
def test_a_rank_silent_far_longer_than_its_peers_is_flagged(
    printed: dict[int, float | None], flagged: list[tuple[str, int]]
) -> None:
    assert [(host, rank) for host, rank, _, _ in silent_ranks(_job(printed), now=1000.0)] == flagged


def test_a_failure_the_same_on_many_ranks_is_named_once() -> None:
    def failed(rank: int, exception: str, line: str = "x.py:3") -> RankFailure:
        return RankFailure(rank, rank % 2, 1, None, exception, ["Traceback", line, exception], 1.0)

    root = RootCause("h1", 3, 1, None, "ValueError: bad batch", ("Traceback", "x.py:3", "ValueError: bad batch"), 1.0)
    others = [
        failed(3, "ValueError: bad batch"),
        failed(7, "ValueError: bad batch"),
        failed(2, "ValueError: bad batch"),
        failed(5, "ValueError: bad batch", line="y.py:9"),  # another place: not the same
        failed(6, "KeyError: 'x'"),
    ]
    assert same_failure(root, others) == (2, 7)


def test_a_hang_makes_the_nccl_ranks_dump_their_flight_recorder(run: RunDir) -> None:
    answer_dump_requests(run.path, 0, b"dump")
    notes: list[str] = []
    taken = StackReport("h0", [RankStack(0, 123, "py-spy"), RankStack(1, 124, "py-spy")], "/s")
    watch = hang.HangWatch(run, "j", 1.0, True, hang.Activity(run), notes.append, lambda: None, lambda r: taken)
    watch.on_hang(time.time() - 5)
    assert (run.path / "nccl_trace_rank_0").read_bytes() == b"dump"
    assert any(note.startswith("NCCL flight-recorder dumps of ranks 0:") for note in notes), notes
