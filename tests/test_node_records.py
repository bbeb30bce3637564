"""The supervisor's output handling (``pump``, ``logfile``'s records) and the job's overall state.

No processes are started: ``_pump`` reads a ``BytesIO`` of torchrun-style console output,
where each worker line arrives as ``RS <global rank> US <text>`` and torchrun's own
lines have no prefix.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from launcher.job.status import overall_state
from launcher.node import logfile, supervisor
from launcher.node.errors import NodeError
from launcher.node.rundir import ExitRecord, JobSpec, RunDir, SupervisorStarted

STAMP = 1_700_000_000.25


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    """What the supervisor mirrors to its tmux pane (see ``pump``); the clock is fixed."""
    monkeypatch.setattr(logfile, "time", SimpleNamespace(time=lambda: STAMP))
    return io.BytesIO()


def as_stdout(pane: object) -> contextlib.redirect_stdout[Any]:
    # Swapped inside the test, not by a fixture: pytest's capture resets sys.stdout after setup.
    return contextlib.redirect_stdout(SimpleNamespace(buffer=pane))


def pump(output: bytes, pane: io.BytesIO, kind: str = "o") -> bytes:
    """The log the supervisor writes for ``output`` on one stream."""
    log = io.BytesIO()
    with as_stdout(pane):
        supervisor.pump(io.BytesIO(output), kind, logfile.OutputLog(log))
    return log.getvalue()


def read_all(path: Path) -> list[list[Any]]:
    records: list[list[Any]] = []
    offset = 0
    while True:
        batch, offset = read_records(path, offset)
        if not batch:
            return records
        records.extend(batch)


def read_records(path: Path, offset: int) -> tuple[list[list[Any]], int]:
    """``logfile.read_forward`` with each record as a plain list, to compare with literals."""
    records, new_offset = logfile.read_forward(path, offset)
    return [list(r) for r in records], new_offset


def rank(r: int | str) -> bytes:
    return b"\x1e%s\x1f" % str(r).encode()


# --- _pump -> log -> _read_records ------------------------------------------------------------

PUMP_CASES = [
    pytest.param(rank(0) + b"hello\n", [(0, "hello")], id="worker line"),
    pytest.param(rank(12) + b"step 3 loss=0.5\n", [(12, "step 3 loss=0.5")], id="two-digit global rank"),
    pytest.param(b"[I torchrun] starting 4 workers\n", [(None, "[I torchrun] starting 4 workers")], id="agent line"),
    pytest.param(rank(1) + b"part" + rank(1) + b"rest\n", [(1, "partrest")], id="tail's second prefix"),
    pytest.param(
        rank(0) + b"a\n" + rank(0) + b"no newline", [(0, "a"), (0, "no newline")], id="last line unterminated"
    ),
    pytest.param(rank(2) + b"bad \xff\xfe end\n", [(2, "bad \ufffd\ufffd end")], id="not UTF-8"),
    pytest.param(rank(3) + "ünï 🚀\n".encode(), [(3, "ünï 🚀")], id="UTF-8"),
    pytest.param(rank(0) + b"\n", [(0, "")], id="empty worker line"),
    pytest.param(b"\n", [(None, "")], id="empty agent line"),
    pytest.param(rank(5) + b"  two  spaces  \n", [(5, "  two  spaces  ")], id="spaces kept"),
    pytest.param(b"1.5 7 e looks like a record\n", [(None, "1.5 7 e looks like a record")], id="record-like text"),
    pytest.param(b"x" + rank(4) + b"y\n", [(None, "xy")], id="prefix not at the start"),
    pytest.param(
        b"[agent] go\n" + rank(0) + b"r0\n" + rank(1) + b"r1\n" + b"[agent] done",
        [(None, "[agent] go"), (0, "r0"), (1, "r1"), (None, "[agent] done")],
        id="interleaved",
    ),
]


@pytest.mark.parametrize(("output", "expected"), PUMP_CASES)
def test_pumped_output_reads_back_with_global_ranks(
    console: io.BytesIO, tmp_path: Path, output: bytes, expected: list[tuple[int | None, str]]
) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(pump(output, console))

    records, offset = read_records(path, 0)

    assert records == [[STAMP, r, "o", text] for r, text in expected]
    assert offset == path.stat().st_size


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(rank(3) + b"epoch 1\r 50%|#####     | 5/10 [00:01<00:01]\n", id="progress bar"),
        pytest.param(rank(3) + b"a\rb\n", id="plain"),
    ],
)
def test_carriage_return_stays_inside_its_record(console: io.BytesIO, tmp_path: Path, output: bytes) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(pump(output, console))

    records, _ = read_records(path, 0)

    assert records == [[STAMP, 3, "o", output[len(rank(3)) : -1].decode()]]


def test_pump_writes_one_record_per_line(console: io.BytesIO) -> None:
    log = pump(rank(0) + b"hello\n" + b"agent\n" + rank(1) + b"a" + rank(1) + b"b", console, kind="e")

    assert log == (b"1700000000.250 0 e hello\n1700000000.250 - e agent\n1700000000.250 1 e ab\n")


def test_pump_mirrors_labelled_lines_to_the_pane(console: io.BytesIO) -> None:
    pump(rank(0) + b"hello\n" + b"[agent] up\n" + rank(7) + b"bad \xff\n" + rank(1) + b"last", console)

    assert console.getvalue() == b"[rank 0] hello\n[agent] up\n[rank 7] bad \xff\n[rank 1] last\n"


class GonePane(io.BytesIO):
    """A tmux pane whose session was killed."""

    def write(self, data: Any) -> int:
        raise OSError("pane is gone")


def test_pump_survives_a_closed_pane(console: io.BytesIO, tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(pump(rank(0) + b"still logged\n", GonePane()))

    assert [record[1:] for record in read_all(path)] == [[0, "o", "still logged"]]


def test_stdout_and_stderr_pumps_share_the_log_whole_records_only(console: io.BytesIO, tmp_path: Path) -> None:
    lines = 2000
    out = b"".join(rank(i % 4) + b"out %d %s\n" % (i, b"o" * 50) for i in range(lines))
    err = b"".join(rank(i % 4) + b"err %d %s\n" % (i, b"e" * 50) for i in range(lines))
    path = tmp_path / "output.log"
    with open(path, "ab", buffering=0) as file, as_stdout(console):
        log = logfile.OutputLog(file)
        pumps = [
            threading.Thread(target=supervisor.pump, args=(io.BytesIO(out), "o", log)),
            threading.Thread(target=supervisor.pump, args=(io.BytesIO(err), "e", log)),
        ]
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()

    records = read_all(path)

    for stream, word, fill in (("o", "out", "o"), ("e", "err", "e")):
        mine = [record for record in records if record[2] == stream]
        assert mine == [[STAMP, i % 4, stream, f"{word} {i} {fill * 50}"] for i in range(lines)]
    assert len(records) == 2 * lines


# --- _read_records ----------------------------------------------------------------------------


def record(stamp: float, r: int | None, text: str, kind: str = "o") -> bytes:
    return b"%.3f %s %s %s\n" % (stamp, b"-" if r is None else str(r).encode(), kind.encode(), text.encode())


def test_read_records_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_records(tmp_path / "nothing.log", 0) == ([], 0)
    assert read_records(tmp_path / "nothing.log", 42) == ([], 42)


def test_read_records_from_an_offset_in_the_middle(tmp_path: Path) -> None:
    first, second, third = record(1.0, 0, "one"), record(2.0, None, "two", "e"), record(3.0, 1, "three words here")
    path = tmp_path / "output.log"
    path.write_bytes(first + second + third)

    records, offset = read_records(path, len(first))

    assert records == [[2.0, None, "e", "two"], [3.0, 1, "o", "three words here"]]
    assert offset == len(first + second + third)
    assert read_records(path, offset) == ([], offset)


def test_a_partial_record_waits_until_it_is_complete(tmp_path: Path) -> None:
    done = record(1.0, 0, "done")
    path = tmp_path / "output.log"
    path.write_bytes(done + b"2.000 1 o half a li")

    records, offset = read_records(path, 0)

    assert records == [[1.0, 0, "o", "done"]]
    assert offset == len(done)
    assert read_records(path, offset) == ([], offset)

    with open(path, "ab") as log:
        log.write(b"ne\n")

    assert read_records(path, offset) == ([[2.0, 1, "o", "half a line"]], path.stat().st_size)


def test_a_partial_record_alone_returns_nothing(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(b"1.000 0 o no end yet")

    assert read_records(path, 0) == ([], 0)


def test_a_large_log_comes_in_batches_that_end_on_record_boundaries(tmp_path: Path) -> None:
    written = [record(float(i), i % 8, f"line {i} " + "x" * 200) for i in range(3000)]
    path = tmp_path / "output.log"
    path.write_bytes(b"".join(written))
    boundaries = set()
    position = 0
    for item in written:
        position += len(item)
        boundaries.add(position)

    records: list[list[Any]] = []
    offsets = []
    offset = 0
    while True:
        batch, offset = read_records(path, offset)
        if not batch:
            break
        records.extend(batch)
        offsets.append(offset)

    assert len(offsets) > 1  # more than one batch
    assert set(offsets) <= boundaries
    assert records == [[float(i), i % 8, "o", f"line {i} " + "x" * 200] for i in range(3000)]


def test_a_line_longer_than_a_batch_comes_in_pieces(console: io.BytesIO, tmp_path: Path) -> None:
    text = "word " * 120_000  # 600 kB on one line, spaces included
    path = tmp_path / "output.log"
    path.write_bytes(pump(rank(3) + text.encode() + b"\n" + rank(0) + b"after\n", console))

    records = read_all(path)

    assert "".join(r[3] for r in records[:-1]) == text
    assert {r[1] for r in records[:-1]} == {3}
    assert records[-1] == [STAMP, 0, "o", "after"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"1.500 0 o hello", [1.5, 0, "o", "hello"]),
        (b"1.500 - e agent says hi", [1.5, None, "e", "agent says hi"]),
        (b"1.500 3 o ", [1.5, 3, "o", ""]),
        (b"1.500 3 o \n", [1.5, 3, "o", ""]),
        (b"1.500 3 o  lead", [1.5, 3, "o", " lead"]),
        (b"1.500 3 o \xff", [1.5, 3, "o", "\ufffd"]),
        (b"garbage", [0.0, None, "o", "garbage"]),
        (b"", [0.0, None, "o", ""]),
    ],
)
def test_parse_record(line: bytes, expected: list[Any]) -> None:
    assert list(logfile.parse_record(line)) == expected


# --- overall_state ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], "unknown"),
        (["succeeded"], "succeeded"),
        (["succeeded", "succeeded", "succeeded"], "succeeded"),
        (["running"], "running"),
        (["running", "succeeded"], "running"),
        (["failed"], "failed"),
        (["failed", "running", "succeeded"], "failed"),
        (["killed"], "killed"),
        (["killed", "failed", "running", "succeeded"], "killed"),
        (["succeeded", "killed"], "killed"),
        (["unknown"], "unknown"),
        (["unknown", "succeeded"], "unknown"),
        (["unreachable"], "unknown"),
        (["unreachable", "succeeded", "succeeded"], "unknown"),
        (["unreachable", "running"], "running"),
        (["unreachable", "failed"], "failed"),
        (["unreachable", "killed"], "killed"),
        (["something new"], "unknown"),
    ],
)
def test_overall_state(states: list[str], expected: str) -> None:
    assert overall_state(states) == expected


# --- the run directory: only its user can read it ----------------------------------------------


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``<state>`` of this node, made the usual way (0755), under the usual umask (022)."""
    home = tmp_path / "state"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    old = os.umask(0o022)
    try:
        yield home
    finally:
        os.umask(old)


def modes(top: Path) -> dict[str, int]:
    """Every path under ``top`` (itself included, as ``.``) and its permission bits."""
    found = {".": stat.S_IMODE(top.stat().st_mode)}
    for path in top.rglob("*"):
        found[str(path.relative_to(top))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def fill(run: RunDir) -> None:
    """Every file a run directory gets, written as the agent, supervisor and ranks write them."""
    with run.open_lock():
        run.reset()
    run.write_spec(JobSpec(job="j", argv=["python", "train.py"], env={"HF_TOKEN": "hf_secret"}, cwd="/"))
    run.write_inputs({"call.pkl": b"pickled arguments"})
    run.mark_held(42)
    run.mark_committed()
    run.write_started(SupervisorStarted(pid=42, create_time=1.0, child=43, time=2.0))
    logfile.OutputLog.open(run.log_path).note("the job printed its token: hf_secret")
    run.write_ranks([0, 1])
    run.write_result(0, b"pickled result")
    run.mark_killed()
    run.write_exit(ExitRecord(exit_code=0, time=3.0))


def test_every_file_of_a_run_directory_is_its_users_only_whatever_the_umask(state: Path) -> None:
    fill(RunDir.of("j"))

    host = socket.gethostname()
    found = modes(state / "launcher")
    assert {
        path for path, mode in found.items() if mode != (0o700 if (state / "launcher" / path).is_dir() else 0o600)
    } == set()
    assert sorted(found) == sorted(
        [".", "runs", "runs/j", f"runs/j/.{host}.lock", f"runs/j/{host}"]
        + [f"runs/j/{host}/{name}" for name in ("spec.json", "inputs", "inputs/call.pkl", "held", "committed")]
        + [f"runs/j/{host}/{name}" for name in ("started.json", "output.log", "ranks.json", "results")]
        + [f"runs/j/{host}/{name}" for name in ("results/0.pkl", "killed", "exit.json")]
    )  # and no temporary file left


def test_a_file_is_its_users_only_before_its_first_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.protocol import private

    seen: list[int] = []
    write = os.write

    def spy(fd: int, data: Any) -> int:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return write(fd, data)

    monkeypatch.setattr(private.os, "write", spy)
    old = os.umask(0)  # the worst: whatever is created without a mode is writable by all
    try:
        private.write_file(tmp_path / "spec.json", b'{"HF_TOKEN": "hf_secret"}')
        private.write_file(tmp_path / "job.sh", b"#!/bin/bash\n", mode=0o700)
    finally:
        os.umask(old)

    assert seen == [0o600, 0o700]
    assert stat.S_IMODE((tmp_path / "spec.json").stat().st_mode) == 0o600


def test_a_state_directory_left_open_by_an_older_version_is_tightened(state: Path) -> None:
    old = state / "launcher" / "runs" / "old" / socket.gethostname()
    old.mkdir(parents=True)
    for directory in (state / "launcher", state / "launcher" / "runs", old.parent):
        directory.chmod(0o755)
    (old / "spec.json").write_text('{"env": {"HF_TOKEN": "hf_secret"}}')

    RunDir.of("old").reset()  # the same job again
    RunDir.of("new").reset()

    found = modes(state / "launcher")
    assert [found[p] for p in (".", "runs", "runs/old", "runs/new")] == [0o700] * 4
    assert found[f"runs/old/{socket.gethostname()}"] == 0o700 and not (old / "spec.json").exists()


def test_a_state_directory_of_another_user_is_refused_naming_it(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    top = state / "launcher"
    top.mkdir(mode=0o755)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)  # as seen by another user

    with pytest.raises(NodeError) as caught:
        RunDir.of("j").reset()

    assert caught.value.kind == "start_failed"
    assert str(caught.value).startswith(f"{top} is readable by other users and cannot be made private (mode 0755")
    assert modes(top) == {".": 0o755}  # nothing changed, nothing written
