"""Reading a node's ``output.log`` backwards for ``logs --tail``, and its filters.

Logs are written in the supervisor's record format to a temporary run directory; the
results are compared with the plain definition: filter the records, then keep the last N
of each rank, in the order they were written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from launcher.node import logfile, logs
from launcher.node.rundir import ExitRecord, RunDir
from launcher.protocol.logs import Follow, LogBatch, LogEnd, ReadLogs, Tail

Record = tuple[int | None, str, bytes]
"""rank (None: the node's own line), stream, text."""

records_st = st.lists(
    st.tuples(
        st.sampled_from([None, 0, 1, 2]),
        st.sampled_from(["o", "e"]),
        st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"|")),
    ),
    max_size=40,
)


def log_bytes(records: list[Record]) -> bytes:
    return b"".join(
        b"%d.000 %s %s %s\n" % (i, b"-" if r is None else str(r).encode(), k.encode(), t)
        for i, (r, k, t) in enumerate(records)
    )


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Job ``job``'s run directory on this node, under a state directory of the test's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    run = RunDir.of("job")
    run.path.mkdir(parents=True)
    return run.path


def tail(count: int, ranks: list[int] | None = None, stderr_only: bool = False) -> list[list[Any]]:
    batches: list[LogBatch] = []
    answer = logs.tail_logs(Tail(job="job", count=count, ranks=ranks, stderr_only=stderr_only), batches.append)
    log = RunDir.of("job").log_path
    assert answer == LogEnd(offset=log.stat().st_size if log.exists() else 0)  # where a follow goes on
    return [list(record) for batch in batches for record in batch.records]


def expected_tail(records: list[Record], count: int, ranks: list[int] | None, stderr_only: bool) -> list[str]:
    kept = [(i, r) for i, r in enumerate(records) if (not ranks or r[0] in ranks) and (not stderr_only or r[1] == "e")]
    last = [(i, r) for n, (i, r) in enumerate(kept) if sum(1 for _, later in kept[n + 1 :] if later[0] == r[0]) < count]
    return [f"{float(i)} {r[0]} {r[1]} {r[2].decode('utf-8', 'replace')}" for i, r in last]


def shown(records: list[list[Any]]) -> list[str]:
    return [f"{stamp} {rank} {kind} {text}" for stamp, rank, kind, text in records]


@settings(max_examples=200, deadline=None)
@given(
    records=records_st, partial=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), block=st.integers(1, 64)
)
def test_records_backwards_gives_every_complete_record_last_first(
    tmp_path_factory: pytest.TempPathFactory, records: list[Record], partial: bytes, block: int
) -> None:
    data = log_bytes(records)
    path = tmp_path_factory.mktemp("log") / "output.log"
    path.write_bytes(data + partial)  # a record still being written is not given

    with open(path, "rb") as log:
        end = logfile.end_of_complete_records(log, block)
        backwards = list(logfile.records_backwards(log, end, block))

    lines = data.split(b"\n")[:-1]
    offsets = [sum(len(line) + 1 for line in lines[:i]) for i in range(len(lines))]
    assert backwards == list(zip(offsets, lines, strict=True))[::-1]
    assert end == len(data)


@settings(max_examples=300, deadline=None)
@given(
    records=records_st,
    count=st.integers(0, 5),
    ranks=st.one_of(st.none(), st.lists(st.sampled_from([0, 1, 2, 7]), min_size=1, max_size=2)),
    stderr_only=st.booleans(),
)
def test_tail_is_the_last_lines_of_each_rank_after_the_filters(
    tmp_path_factory: pytest.TempPathFactory,
    records: list[Record],
    count: int,
    ranks: list[int] | None,
    stderr_only: bool,
) -> None:
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:  # hypothesis runs many examples per function-scoped fixture
        patch.setenv("XDG_STATE_HOME", str(state))
        run = RunDir.of("job")
        run.path.mkdir(parents=True)
        run.log_path.write_bytes(log_bytes(records))
        # The supervisor lists the ranks it saw on this node; it may stop reading early once each has enough.
        run.write_ranks(sorted({r for r, _, _ in records if r is not None}))
        assert shown(tail(count, ranks, stderr_only)) == expected_tail(records, count, ranks, stderr_only)


def test_tail_reads_only_as_far_back_as_it_needs(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 0 printed 200,000 lines long ago; the last two of ranks 0 and 1 are near the end.
    old = b"".join(b"1.000 0 o old %d\n" % i for i in range(200_000))
    recent = b"2.000 0 o r0a\n2.000 1 o r1a\n2.000 0 o r0b\n2.000 1 o r1b\n"
    (run_dir / "output.log").write_bytes(old + recent)
    RunDir(run_dir).write_ranks([0, 1])
    read: list[int] = []
    real = logfile.records_backwards

    def counted(log: Any, end: int, block: int = 1 << 20) -> Any:
        for item in real(log, end, block=64):
            read.append(item[0])
            yield item

    monkeypatch.setattr(logfile, "records_backwards", counted)

    assert [r[3] for r in tail(2, ranks=[0, 1])] == ["r0a", "r1a", "r0b", "r1b"]
    assert len(read) == 4


def test_tail_comes_in_batches_in_order(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfile, "MAX_BATCH_BYTES", 100)
    (run_dir / "output.log").write_bytes(b"".join(b"%d.000 0 o line %d\n" % (i, i) for i in range(50)))
    batches: list[LogBatch] = []

    logs.tail_logs(Tail(job="job", count=30), batches.append)

    assert len(batches) > 1
    assert [r.text for b in batches for r in b.records] == [f"line {i}" for i in range(20, 50)]


def test_tail_of_a_job_without_output_is_empty(run_dir: Path) -> None:
    assert tail(10) == []


def test_read_logs_filters_but_still_moves_on(run_dir: Path) -> None:
    (run_dir / "output.log").write_bytes(b"1.000 0 o out\n1.000 0 e err\n1.000 1 e other\n1.000 - e agent\n")

    answer = logs.read_logs(ReadLogs(job="job", offset=0, ranks=[0], stderr_only=True))

    assert [r.text for r in answer.records] == ["err"]
    assert answer.offset == (run_dir / "output.log").stat().st_size
    assert logs.read_logs(ReadLogs(job="job", offset=answer.offset, ranks=[0])) == LogBatch([], answer.offset)


def test_tail_ends_before_a_record_still_being_written(run_dir: Path) -> None:
    (run_dir / "output.log").write_bytes(b"1.000 0 o done\n1.000 0 o half writ")
    batches: list[LogBatch] = []

    answer = logs.tail_logs(Tail(job="job", count=5), batches.append)

    assert [r.text for b in batches for r in b.records] == ["done"]
    assert answer == LogEnd(offset=len(b"1.000 0 o done\n"))


def test_follow_sends_only_what_passes_the_filters_and_ends_with_the_job(run_dir: Path) -> None:
    log = b"1.000 0 o out\n1.000 1 e other\n1.000 0 e err\n1.000 - o agent\n"
    (run_dir / "output.log").write_bytes(log)
    RunDir(run_dir).write_exit(ExitRecord(exit_code=0, time=2.0))
    sent: list[LogBatch] = []

    answer = logs.follow_logs(Follow(job="job", offset=0, ranks=[0]), sent.append)

    assert [r.text for m in sent for r in m.records] == ["out", "err"]
    assert answer == LogEnd(offset=len(log), ended=True)
