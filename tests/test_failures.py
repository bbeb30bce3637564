"""Why a node failed: torchrun's failure summary, the root rank's traceback, ``@record`` files.

Records are ``[time, rank or None, stream, text]`` as the node reads them back from its
``output.log``. torchrun's own lines have no rank; the summaries below are what torchrun
2.13 printed for a SIGKILLed rank and for a rank that raised (trailing spaces included).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from launcher.node.failures import rank_failures, root_cause
from launcher.protocol.codec import decode, to_wire
from launcher.protocol.logs import LogRecord
from launcher.protocol.messages import RankFailure

Record = LogRecord

NOTICED_AT = 1_700_000_053.5
SUMMARY_AT = 1_700_000_054.0

TORCHRUN_TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "/opt/py/bin/torchrun", line 8, in <module>',
    "    sys.exit(main())",
    '  File "/opt/py/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 270, in launch_agent',
    "    raise ChildFailedError(",
)
"""What torchrun prints on stderr just before its summary."""

SIGKILL_SUMMARY = (
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "=======================================================",
    "boom.py FAILED",
    "-------------------------------------------------------",
    "Failures:",
    "[1]:",
    "  time      : 2026-11-21_09:31:53",
    "  host      : localhost",
    "  rank      : 0 (local_rank: 0)",
    "  exitcode  : -15 (pid: 24109)  (SIGTERM)",
    "  error_file: <N/A>",
    "  traceback : Signal 15 (SIGTERM) received by PID 24109",
    "[2]:",
    "  time      : 2026-11-21_09:31:53",
    "  host      : localhost",
    "  rank      : 1 (local_rank: 1)",
    "  exitcode  : -15 (pid: 24110)  (SIGTERM)",
    "  error_file: <N/A>",
    "  traceback : Signal 15 (SIGTERM) received by PID 24110",
    "-------------------------------------------------------",
    "Root Cause (first observed failure):",
    "[0]:",
    "  time      : 2026-11-21_09:31:53",
    "  host      : localhost",
    "  rank      : 2 (local_rank: 2)",
    "  exitcode  : -9 (pid: 24111)  (SIGKILL)",
    "  error_file: <N/A>",
    "  traceback : Signal 9 (SIGKILL) received by PID 24111",
    "=======================================================",
)


def exception_summary(
    rank: int = 3, local_rank: int = 1, error_file: str = "<N/A>", traceback: Sequence[str] = ()
) -> tuple[str, ...]:
    """torchrun's summary for a rank that exited with 1; ``traceback`` as torch indents it
    when it read an ``@record`` error file."""
    shown = ["  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html"]
    if traceback:
        shown = [f"  traceback : {traceback[0]}", *(f"  {line}" for line in traceback[1:])]
    return (
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "x.py FAILED",
        "------------------------------------------------------------",
        "Failures:",
        "  <NO_OTHER_FAILURES>",
        "------------------------------------------------------------",
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2026-11-21_09:31:53",
        "  host      : localhost",
        f"  rank      : {rank} (local_rank: {local_rank})",
        "  exitcode  : 1 (pid: 517) ",
        f"  error_file: {error_file}",
        *shown,
        "============================================================",
    )


def noticed(local_rank: int, exitcode: int, pid: int = 517) -> str:
    """torchrun's log line when it sees a worker end badly."""
    return (
        f"E1121 09:31:53.480000 24100 torch/distributed/elastic/multiprocessing/api.py:869] "
        f"failed (exitcode: {exitcode}) local_rank: {local_rank} (pid: {pid}) of binary: /opt/py/bin/python3"
    )


def torchrun_lines(lines: Iterable[str], at: float = SUMMARY_AT) -> list[Record]:
    return [LogRecord(at, None, "e", line) for line in lines]


def rank_lines(rank: int, lines: Iterable[str], at: float = 1_700_000_050.0, stream: str = "e") -> list[Record]:
    return [LogRecord(at, rank, stream, line) for line in lines]


def torchrun_end(summary: Sequence[str], local_rank: int, exitcode: int) -> list[Record]:
    """torchrun's stderr from noticing the failure to its summary."""
    return [
        LogRecord(NOTICED_AT, None, "e", noticed(local_rank, exitcode)),
        *torchrun_lines(TORCHRUN_TRACEBACK),
        *torchrun_lines(summary),
    ]


PREFIXED_TRACEBACK = (
    "[rank3]: Traceback (most recent call last):",
    '[rank3]:   File "x.py", line 16, in <module>',
    '[rank3]:     raise ValueError("bad")',
    "[rank3]: ValueError: bad",
)
TRACEBACK = (
    "Traceback (most recent call last):",
    '  File "x.py", line 16, in <module>',
    '    raise ValueError("bad")',
    "ValueError: bad",
)


# --- rank_failures -------------------------------------------------------------------------


def facts(failures: dict[int, RankFailure]) -> dict[int, dict[str, Any]]:
    """What torchrun's summary says of each rank (no traceback: only the root cause has one)."""
    fields = ("rank", "local_rank", "exit_code", "signal", "error_file")
    return {rank: {name: getattr(f, name) for name in fields} for rank, f in failures.items()}


def test_every_failed_rank_and_the_root_cause() -> None:
    failures, root = rank_failures(torchrun_end(SIGKILL_SUMMARY, local_rank=2, exitcode=-9))

    assert root == 2
    assert facts(failures) == {
        0: {"rank": 0, "local_rank": 0, "exit_code": -15, "signal": "SIGTERM", "error_file": None},
        1: {"rank": 1, "local_rank": 1, "exit_code": -15, "signal": "SIGTERM", "error_file": None},
        2: {"rank": 2, "local_rank": 2, "exit_code": -9, "signal": "SIGKILL", "error_file": None},
    }


def test_no_other_failures() -> None:
    failures, root = rank_failures(torchrun_end(exception_summary(), local_rank=1, exitcode=1))

    assert root == 3
    assert facts(failures) == {3: {"rank": 3, "local_rank": 1, "exit_code": 1, "signal": None, "error_file": None}}


def test_a_summary_printed_by_a_rank_is_not_torchruns() -> None:
    assert rank_failures(rank_lines(0, SIGKILL_SUMMARY)) == ({}, None)
    assert rank_failures([LogRecord(1.0, None, "o", line) for line in SIGKILL_SUMMARY]) == ({}, None)


def test_a_signal_without_a_name() -> None:
    summary = [line.replace("  (SIGKILL)", "") for line in SIGKILL_SUMMARY]

    failures, root = rank_failures(torchrun_lines(summary))

    assert root == 2
    assert failures[2].signal == "signal 9"


def test_an_error_file_is_named() -> None:
    failures, _ = rank_failures(torchrun_lines(exception_summary(error_file="/tmp/x/error.json")))

    assert failures[3].error_file == "/tmp/x/error.json"


# --- root_cause ----------------------------------------------------------------------------


def test_sigkill_root_cause() -> None:
    records = [
        *rank_lines(2, ["step 10"], stream="o"),
        *torchrun_end(SIGKILL_SUMMARY, local_rank=2, exitcode=-9),
    ]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert (cause.rank, cause.local_rank, cause.exit_code, cause.signal) == (2, 2, -9, "SIGKILL")
    assert cause.exception.startswith("killed by SIGKILL")
    assert "OOM" in cause.exception
    assert cause.time == NOTICED_AT
    assert rank_failures(records)[0][0].signal == "SIGTERM"


def test_a_sigterm_root_cause_has_no_oom_hint() -> None:
    summary = [line.replace("-9 (pid: 24111)  (SIGKILL)", "-15 (pid: 24111)  (SIGTERM)") for line in SIGKILL_SUMMARY]

    cause = root_cause(torchrun_lines(summary), exit_code=1)

    assert cause is not None
    assert cause.exception == "killed by SIGTERM"


def test_exception_with_torch_rank_prefixes() -> None:
    records = [
        *rank_lines(3, ["loading data"], stream="o"),
        *rank_lines(3, PREFIXED_TRACEBACK),
        *rank_lines(2, ["Traceback (most recent call last):", "KeyError: 'other rank'"]),
        *torchrun_end(exception_summary(), local_rank=1, exitcode=1),
    ]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert (cause.rank, cause.local_rank, cause.exit_code, cause.signal) == (3, 1, 1, None)
    assert cause.traceback == list(TRACEBACK)
    assert cause.exception == "ValueError: bad"


def test_plain_traceback() -> None:
    records = [*rank_lines(3, ["warming up", *TRACEBACK]), *torchrun_end(exception_summary(), 1, 1)]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.traceback == list(TRACEBACK)
    assert cause.exception == "ValueError: bad"


def test_the_last_traceback_of_the_rank_is_the_one() -> None:
    logged = ["Traceback (most recent call last):", '  File "x.py", line 3, in <module>', "OSError: retrying"]
    chained = [
        "Traceback (most recent call last):",
        '  File "x.py", line 9, in <module>',
        "KeyError: 'lr'",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        *TRACEBACK,
    ]
    records = [*rank_lines(3, logged + chained), *torchrun_end(exception_summary(), 1, 1)]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.traceback == list(TRACEBACK)
    assert cause.exception == "ValueError: bad"


def test_no_traceback_printed_gives_the_last_lines() -> None:
    printed = [f"line {i}" for i in range(15)]
    records = [*rank_lines(3, printed), *torchrun_end(exception_summary(), 1, 1)]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.traceback == printed[-10:]
    assert cause.exception == "line 14"


def test_a_rank_that_printed_nothing() -> None:
    cause = root_cause(torchrun_end(exception_summary(), 1, 1), exit_code=1)

    assert cause is not None
    assert (cause.traceback, cause.exception) == ([], "")


def test_a_deep_traceback_keeps_its_exception() -> None:
    frames = [
        line
        for i in range(40)
        for line in (f'  File "/opt/py/lib/torch/nn/modules/module.py", line {i}, in _call_impl', "    return f()")
    ]
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    records = [
        *rank_lines(3, ["Traceback (most recent call last):", *frames, oom]),
        *torchrun_end(exception_summary(), 1, 1),
    ]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.exception == oom


def test_output_after_the_traceback_is_not_the_exception() -> None:
    warning = (
        "[rank3]:[W1121 09:31:53.829584251 ProcessGroupNCCL.cpp:1479] Warning: WARNING: destroy_process_group() "
        "was not called before program exit, which can leak resources. For more info, please see "
        "https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())"
    )
    records = [*rank_lines(3, [*PREFIXED_TRACEBACK, warning]), *torchrun_end(exception_summary(), 1, 1)]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.exception == "ValueError: bad"


def test_a_later_summary_wins() -> None:
    records = [
        *torchrun_end(SIGKILL_SUMMARY, local_rank=2, exitcode=-9),
        *rank_lines(3, TRACEBACK, at=1_700_000_100.0),
        LogRecord(1_700_000_101.0, None, "e", noticed(1, 1)),
        *torchrun_lines(TORCHRUN_TRACEBACK, at=1_700_000_102.0),
        *torchrun_lines(exception_summary(), at=1_700_000_102.0),
    ]

    failures, root = rank_failures(records)
    cause = root_cause(records, exit_code=1)

    assert (sorted(failures), root) == ([3], 3)
    assert cause is not None
    assert (cause.rank, cause.exit_code, cause.signal, cause.exception) == (3, 1, None, "ValueError: bad")
    assert cause.time == 1_700_000_101.0


def test_after_restarts_the_time_is_the_last_attempts() -> None:
    records = [
        LogRecord(1_700_000_010.0, None, "e", noticed(1, 1, pid=400)),
        LogRecord(
            1_700_000_011.0, None, "e", "[default] Worker group FAILED. 1/1 attempts left; will restart worker group"
        ),
        *rank_lines(3, TRACEBACK, at=1_700_000_049.0),
        LogRecord(1_700_000_050.0, None, "e", noticed(1, 1, pid=517)),
        *torchrun_lines(exception_summary(), at=1_700_000_051.0),
    ]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.time == 1_700_000_050.0


def test_time_is_when_torchrun_noticed_the_root_rank() -> None:
    records: list[Record] = [
        LogRecord(1_700_000_040.0, None, "e", noticed(11, 1)),  # another local rank, whose number contains 1
        LogRecord(1_700_000_041.0, None, "o", noticed(1, 1)),  # not torchrun's stderr
        LogRecord(1_700_000_042.0, 1, "e", noticed(1, 1)),  # printed by a rank
        LogRecord(1_700_000_043.0, None, "e", noticed(1, 1)),
        *torchrun_lines(exception_summary(), at=1_700_000_044.0),
    ]

    cause = root_cause(records, exit_code=1)

    assert cause is not None
    assert cause.time == 1_700_000_043.0


def test_without_the_noticed_line_the_time_is_the_last_record() -> None:
    cause = root_cause([*torchrun_lines(exception_summary(), at=7.0), LogRecord(9.5, 0, "o", "bye")], exit_code=1)

    assert cause is not None
    assert cause.time == 9.5


@pytest.mark.parametrize("exit_code", [0, None])
def test_no_failure(exit_code: int | None) -> None:
    records = [*rank_lines(0, ["done"], stream="o"), *torchrun_lines(["W1121 something harmless"])]

    assert root_cause(records, exit_code) is None
    assert root_cause([], exit_code) is None


@pytest.mark.parametrize(
    ("stderr", "traceback", "exception"),
    [
        pytest.param(
            [
                "usage: torchrun [-h] [--nnodes NNODES] [--nproc-per-node NPROC_PER_NODE]",
                "                training_script ...",
                "torchrun: error: unrecognized arguments: --bogus",
            ],
            None,
            "torchrun: error: unrecognized arguments: --bogus",
            id="torchrun-usage",
        ),
        pytest.param(
            [
                "W1121 09:31:00.000000 1 torch/distributed/run.py:793] *****",
                "Traceback (most recent call last):",
                '  File "/opt/py/bin/torchrun", line 8, in <module>',
                "    sys.exit(main())",
                "torch.distributed.DistNetworkError: The client socket has timed out after 900000ms",
            ],
            slice(1, None),
            "torch.distributed.DistNetworkError: The client socket has timed out after 900000ms",
            id="rendezvous",
        ),
        pytest.param(
            ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "ImportError: no x"],
            slice(None),
            "ImportError: no x",
            id="python-runner",
        ),
        pytest.param(
            [
                "Traceback (most recent call last):",
                '  File "agent.py", line 1, in run',
                "RuntimeError: agent died",
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
                "=======================================================",
                "Failures:",
                "[1]:",
                "  traceback : Signal 15 (SIGTERM) received by PID 24109",
            ],
            slice(0, 3),
            "RuntimeError: agent died",
            id="truncated-summary",
        ),
    ],
)
def test_no_summary(stderr: list[str], traceback: slice | None, exception: str) -> None:
    records = [*rank_lines(0, ["Traceback (most recent call last):", "ValueError: a rank's"]), *torchrun_lines(stderr)]

    cause = root_cause(records, exit_code=2)

    assert cause is not None
    assert (cause.rank, cause.local_rank, cause.exit_code, cause.signal) == (None, None, 2, None)
    assert cause.traceback == (stderr[-10:] if traceback is None else stderr[traceback])
    assert cause.exception == exception
    assert cause.time == SUMMARY_AT


# --- error files (@record) -----------------------------------------------------------------

CALLSTACK = 'Traceback (most recent call last):\n  File "x.py", line 16, in <module>\n    raise ValueError("bad")\nValueError: bad\n'


def with_error_file(path: Path) -> list[Record]:
    printed = ["Traceback (most recent call last):", "RuntimeError: printed"]
    summary = exception_summary(error_file=str(path), traceback=CALLSTACK.splitlines())
    return [*rank_lines(3, printed), *torchrun_end(summary, local_rank=1, exitcode=1)]


def test_the_error_file_is_preferred(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    content = {"message": {"message": "ValueError: bad", "extraInfo": {"py_callstack": CALLSTACK, "timestamp": "1"}}}
    path.write_text(json.dumps(content), encoding="utf-8")

    cause = root_cause(with_error_file(path), exit_code=1)

    assert cause is not None
    assert cause.rank == 3
    assert cause.error_file == str(path)
    assert cause.traceback == CALLSTACK.splitlines()
    assert cause.exception == "ValueError: bad"


def test_an_error_file_with_a_plain_message(tmp_path: Path) -> None:
    path = tmp_path / "error.json"
    path.write_text(json.dumps({"message": "RuntimeError: from the file"}), encoding="utf-8")

    cause = root_cause(with_error_file(path), exit_code=1)

    assert cause is not None
    assert cause.exception == "RuntimeError: from the file"


@pytest.mark.parametrize(
    "content",
    [
        None,
        b"{not json",
        b"\xff\xfe garbage",
        b"null",
        b"[]",
        b'"message"',
        b'{"other": 1}',
        b'{"message": 7}',
        b'{"message": {"message": "x"}}',
        b'{"message": {"extraInfo": null}}',
        b'{"message": {"extraInfo": {"py_callstack": ""}}}',
        "directory",
    ],
    ids=repr,
)
def test_a_missing_or_corrupt_error_file_falls_back_to_stderr(tmp_path: Path, content: bytes | str | None) -> None:
    path = tmp_path / "error.json"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)

    cause = root_cause(with_error_file(path), exit_code=1)

    assert cause is not None
    assert cause.traceback == ["Traceback (most recent call last):", "RuntimeError: printed"]
    assert cause.exception == "RuntimeError: printed"


# --- hostile input -------------------------------------------------------------------------

HOSTILE = [
    "",
    " ",
    "\x00\x1e\x1f\r",
    "[0]:",
    "[]:",
    "Root Cause",
    "Failures:",
    "ChildFailedError",
    "  rank      : x (local_rank: y)",
    "  rank      : 99999999999999999999999999 (local_rank: 0)",
    "  rank      : -1 (local_rank: -1)",
    "  exitcode  : -",
    "  exitcode  : --9 (SIGKILL)",
    "  exitcode  : 0 (pid: 1)",
    "  error_file: ",
    "  error_file: /nonexistent/\x00/error.json",
    "  traceback : ",
    "  traceback :",
    "  ünïcødé   : ☃",
    "failed (exitcode: 1) local_rank: 99999999999999999999 (pid: x)",
    "failed (exitcode: x) local_rank: 0",
    "Traceback (most recent call last):",
    "    raise",
    "[rank0]: ",
    "x" * 100_000,
]


@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_line_never_raises(line: str) -> None:
    for records in (
        torchrun_lines([line]),
        torchrun_lines([*SIGKILL_SUMMARY[:22], line, *SIGKILL_SUMMARY[22:]]),
        [*rank_lines(2, [line]), *torchrun_lines(SIGKILL_SUMMARY)],
    ):
        rank_failures(records)
        for exit_code in (None, 0, 1, -9):
            root_cause(records, exit_code)


def test_shuffled_summaries_never_raise() -> None:
    pool = [*SIGKILL_SUMMARY, *exception_summary(), *TORCHRUN_TRACEBACK, *HOSTILE[:-1], noticed(2, -9)]
    shuffle = random.Random(1234)
    for _ in range(300):
        lines = shuffle.choices(pool, k=shuffle.randint(0, 60))
        records = [*torchrun_lines(lines), *rank_lines(2, shuffle.choices(pool, k=5))]
        failures, root = rank_failures(records)
        assert root is None or root in failures
        cause = root_cause(records, exit_code=1)
        assert cause is not None
        assert isinstance(cause.exception, str)
        assert decode(RankFailure, json.loads(json.dumps(to_wire(cause)))) == cause  # it crosses the wire whole
