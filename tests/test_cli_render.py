"""What the command line shows: attach commands, log lines, dry-run quoting, status JSON.

Pure rendering, no hosts: each function gets the records the library would return.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
from typing import Any, Literal

import pytest

from launcher.cli import render
from launcher.job.logs import LogLine
from launcher.job.status import HostStatus, JobStatus, RankStatus, RootCause, _rank_states
from launcher.launching.commands import attach_argv
from launcher.protocol.codec import decode
from launcher.protocol.messages import NodeStatus

# --- attach_argv ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "read_only", "expected"),
    [
        (False, False, ["tmux", "attach-session", "-t", "=launcher-train-1"]),
        (False, True, ["tmux", "attach-session", "-r", "-t", "=launcher-train-1"]),
        (
            True,
            False,
            ["ssh", "-t", "-p", "2222", "-l", "alice", "h1.example", "tmux attach-session -t =launcher-train-1"],
        ),
        (
            True,
            True,
            ["ssh", "-t", "-p", "2222", "-l", "alice", "h1.example", "tmux attach-session -r -t =launcher-train-1"],
        ),
    ],
)
def test_attach_argv(remote: bool, read_only: bool, expected: list[str]) -> None:
    argv = attach_argv("h1.example", "alice", 2222, not remote, "train-1", read_only)

    assert argv == expected


@pytest.mark.parametrize(
    ("user", "port", "options"),
    [
        (None, None, []),
        ("bob", None, ["-l", "bob"]),
        (None, 22, ["-p", "22"]),
    ],
)
def test_attach_argv_lets_ssh_decide_what_is_not_given(user: str | None, port: int | None, options: list[str]) -> None:
    argv = attach_argv("10.0.0.2", user, port, False, "j", read_only=False)

    assert argv == ["ssh", "-t", *options, "10.0.0.2", "tmux attach-session -t =launcher-j"]


def test_attach_remote_command_is_one_quoted_word() -> None:
    """The login shell on the host splits the last word back into tmux's argv."""
    argv = attach_argv("::1", None, None, False, "a_b-9", read_only=True)

    assert shlex.split(argv[-1]) == ["tmux", "attach-session", "-r", "-t", "=launcher-a_b-9"]
    assert argv[-2] == "::1"


def test_attach_targets_exactly_its_session_on_a_real_tmux(tmp_path: Any) -> None:
    """``launcher-train`` has ended and ``launcher-train-2`` runs: attach must not open the latter."""
    server = ["tmux", "-S", str(tmp_path / "tmux.sock")]
    attach = attach_argv("h1", None, None, True, "train", read_only=False)
    assert attach[0] == "tmux"

    def attached_to_a_session(argv: list[str]) -> bool:
        # Without a terminal, tmux stops right after finding the session, or says it found none.
        tried = subprocess.run([*server, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        assert tried.returncode != 0
        assert "not a terminal" in tried.stderr or "can't find session" in tried.stderr, tried.stderr
        return "not a terminal" in tried.stderr

    try:
        subprocess.run([*server, "new-session", "-d", "-s", "launcher-train-2", "sleep", "60"], check=True)
        assert not attached_to_a_session(attach)
        assert attached_to_a_session([a.lstrip("=") for a in attach])  # what a bare name did: by prefix
        subprocess.run([*server, "new-session", "-d", "-s", "launcher-train", "sleep", "60"], check=True)
        assert attached_to_a_session(attach)
    finally:
        subprocess.run([*server, "kill-server"], capture_output=True, check=False)


# --- render.LinePrinter --------------------------------------------------------------------------


def line(host: str, rank: int | None, text: str, stream: Literal["o", "e"] = "o") -> LogLine:
    return LogLine(host=host, rank=rank, stream=stream, text=text, time=1.0)


LINES = [
    line("h0", None, "torchrun: starting", "e"),
    line("h0", 0, "step 1"),
    line("h1", 1, "step 1"),
    line("h1", 1, "warning: x", "e"),
    line("h0", 0, "loss 0.5"),
]


def printed(capsys: pytest.CaptureFixture[str], printer: render.LinePrinter, lines: list[LogLine]) -> list[str]:
    for each in lines:
        printer(each)
    return capsys.readouterr().out.splitlines()


def test_labels(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, render.LinePrinter(set(), stderr_only=False, no_prefix=False), LINES) == [
        "[h0] torchrun: starting",
        "[h0 rank 0] step 1",
        "[h1 rank 1] step 1",
        "[h1 rank 1] warning: x",
        "[h0 rank 0] loss 0.5",
    ]


def test_only_some_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, render.LinePrinter({0}, stderr_only=False, no_prefix=False), LINES) == [
        "[h0 rank 0] step 1",
        "[h0 rank 0] loss 0.5",
    ]


def test_only_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, render.LinePrinter(set(), stderr_only=True, no_prefix=False), LINES) == [
        "[h0] torchrun: starting",
        "[h1 rank 1] warning: x",
    ]


def test_ranks_and_stderr_together(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, render.LinePrinter({1}, stderr_only=True, no_prefix=True), LINES) == ["warning: x"]


def test_no_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, render.LinePrinter(set(), stderr_only=False, no_prefix=True), LINES) == [
        "torchrun: starting",
        "step 1",
        "step 1",
        "warning: x",
        "loss 0.5",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", ["[h rank 3] plain"]),
        ("", ["[h rank 3] "]),
        (
            " 10%|#   |\r 50%|##  |\r100%|####|",
            ["[h rank 3]  10%|#   |", "[h rank 3]  50%|##  |", "[h rank 3] 100%|####|"],
        ),
        ("\rfirst\r\rsecond\r", ["[h rank 3] first", "[h rank 3] second"]),
        ("\r", []),
        ("a [red]b[/] $(x) \x1b[1m", ["[h rank 3] a [red]b[/] $(x) \x1b[1m"]),
    ],
)
def test_carriage_returns_split_frames(capsys: pytest.CaptureFixture[str], text: str, expected: list[str]) -> None:
    printer = render.LinePrinter(set(), stderr_only=False, no_prefix=False)

    printer(line("h", 3, text))

    assert capsys.readouterr().out.split("\n")[:-1] == expected


def test_no_colour_on_a_pipe(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)

    out = printed(capsys, render.LinePrinter(set(), stderr_only=False, no_prefix=False), LINES)

    assert not any("\x1b" in each for each in out)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("no_color", [None, "1"])
def test_one_colour_per_host_on_a_terminal(monkeypatch: pytest.MonkeyPatch, no_color: str | None) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    printer = render.LinePrinter(set(), stderr_only=False, no_prefix=False)

    for each in LINES:
        printer(each)

    out = terminal.getvalue().splitlines()
    if no_color is not None:
        assert out[0] == "[h0] torchrun: starting"
        return
    h0, h1 = "\x1b[36m", "\x1b[33m"
    assert out == [
        f"{h0}[h0]\x1b[0m torchrun: starting",
        f"{h0}[h0 rank 0]\x1b[0m step 1",
        f"{h1}[h1 rank 1]\x1b[0m step 1",
        f"{h1}[h1 rank 1]\x1b[0m warning: x",
        f"{h0}[h0 rank 0]\x1b[0m loss 0.5",
    ]


# --- render.shell_quote --------------------------------------------------------------------------


def through_bash(quoted: str) -> bytes:
    return subprocess.run(["bash", "-c", "printf %s " + quoted], capture_output=True, check=True, timeout=10).stdout


@pytest.mark.parametrize(
    ("word", "quoted"),
    [
        ("plain", "plain"),
        ("", "''"),
        ("a b", "'a b'"),
        ("it's", "'it'\"'\"'s'"),
        ("$(rm -rf ~)", "'$(rm -rf ~)'"),
        ("\x1e0\x1f", "$'\\x1e0\\x1f'"),
        ("a\tb\nc", "$'a\\x09b\\x0ac'"),
        ("it's\x01\\", "$'it\\x27s\\x01\\x5c'"),
    ],
)
def test_shell_quote(word: str, quoted: str) -> None:
    assert render.shell_quote(word) == quoted


@pytest.mark.parametrize(
    "word",
    [
        "plain",
        "",
        "a b",
        "it's",
        '"double" and `back`',
        "$(rm -rf ~) ${HOME} $HOME",
        "☃ ünïcødé",
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE=\x1e${rank}\x1f",
        "a\tb\nc\rd\x1b[0m\x7f",
        "it's\x01\\'$x",
        "é\x07",
        "zero\u200bwidth",
    ],
)
def test_bash_reads_back_the_same_string(word: str) -> None:
    assert through_bash(render.shell_quote(word)) == word.encode()


@pytest.mark.parametrize("word", ["a\xa0b", "x\x85", "soft\xadhyphen"])
def test_bash_reads_back_latin1_invisibles(word: str) -> None:
    assert through_bash(render.shell_quote(word)) == word.encode()


# --- status_json, _rank_states -------------------------------------------------------------

CAUSE = RootCause(
    host="h1",
    rank=2,
    exit_code=-9,
    signal="SIGKILL",
    exception="killed by SIGKILL (out of memory? the kernel's OOM killer sends SIGKILL)",
    traceback=("Traceback (most recent call last):", "ValueError: bad"),
    time=1_700_000_053.5,
)

STATUS = JobStatus(
    name="train-1",
    state="failed",
    hosts=(
        HostStatus(
            host="h0",
            state="failed",
            exit_code=1,
            error="stopped: h1 failed",
            started_at=1_700_000_000.0,
            ended_at=1_700_000_060.0,
            ranks=(RankStatus(0, "ended"), RankStatus(1, "ended")),
            stopped_by=1,
        ),
        HostStatus(
            host="h1",
            state="failed",
            exit_code=1,
            started_at=1_700_000_000.0,
            ended_at=1_700_000_055.0,
            restarts=1,
            ranks=(RankStatus(2, "failed", -9, "SIGKILL"), RankStatus(3, "failed", -15, "SIGTERM")),
        ),
        HostStatus(host="h2", state="unreachable", error="connection refused"),
    ),
    root_cause=CAUSE,
)


def test_status_json() -> None:
    data = json.loads(json.dumps(render.status_json(STATUS)))

    assert (data["name"], data["state"]) == ("train-1", "failed")
    assert [(h["host"], h["state"], h["exit_code"]) for h in data["hosts"]] == [
        ("h0", "failed", 1),
        ("h1", "failed", 1),
        ("h2", "unreachable", None),
    ]
    assert data["hosts"][0]["error"] == "stopped: h1 failed"
    assert data["hosts"][0]["stopped_by"] == 1
    assert "error" not in data["hosts"][1]
    assert data["hosts"][1]["restarts"] == 1
    assert data["hosts"][1]["ranks"] == [
        {"rank": 2, "state": "failed", "exit_code": -9, "signal": "SIGKILL"},
        {"rank": 3, "state": "failed", "exit_code": -15, "signal": "SIGTERM"},
    ]
    assert data["hosts"][2]["ranks"] == []
    assert data["root_cause"] == {
        "host": "h1",
        "rank": 2,
        "exit_code": -9,
        "signal": "SIGKILL",
        "exception": CAUSE.exception,
        "traceback": list(CAUSE.traceback),
        "time": 1_700_000_053.5,
        "lost": False,
        "same_on": [],
    }


def test_status_json_of_a_running_job() -> None:
    running = JobStatus("j", "running", (HostStatus("h0", "running", ranks=(RankStatus(0, "running"),)),))

    data = render.status_json(running)

    assert json.loads(json.dumps(data)) == {
        "name": "j",
        "state": "running",
        "hosts": [
            {
                "host": "h0",
                "state": "running",
                "exit_code": None,
                "started_at": None,
                "ended_at": None,
                "restarts": 0,
                "ranks": [{"rank": 0, "state": "running", "exit_code": None, "signal": None}],
                "stopped_by": None,
                "last_heard": None,
                "interface": None,
                "last_printed": {},
            }
        ],
        "root_cause": None,
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"state": "running", "ranks": [0, 1]}, [RankStatus(0, "running"), RankStatus(1, "running")]),
        ({"state": "succeeded", "ranks": [4]}, [RankStatus(4, "succeeded", 0)]),
        ({"state": "killed", "ranks": [0]}, [RankStatus(0, "killed")]),
        (
            {
                "state": "failed",
                "ranks": [0, 1, 2],
                "rank_failures": {"1": {"exit_code": 1, "signal": None}, "2": {"exit_code": -15, "signal": "SIGTERM"}},
            },
            [RankStatus(0, "ended"), RankStatus(1, "failed", 1), RankStatus(2, "failed", -15, "SIGTERM")],
        ),
        ({"state": "failed"}, []),
    ],
)
def test_rank_states(answer: dict[str, Any], expected: list[RankStatus]) -> None:
    failures = {
        key: {"rank": int(key), "local_rank": None, "exception": "", "traceback": [], "time": None, **failure}
        for key, failure in answer.get("rank_failures", {}).items()
    }
    status = decode(NodeStatus, {"hostname": "h0", **answer, "rank_failures": failures})  # as a node answers

    assert list(_rank_states(status)) == expected


# --- render.print_root_cause ---------------------------------------------------------------------


def root_cause_text(cause: RootCause) -> str:
    from rich.console import Console

    out = io.StringIO()
    render.print_root_cause(Console(file=out, width=200, highlight=False, color_system=None), cause)
    return out.getvalue()


def test_print_root_cause() -> None:
    cause = RootCause(
        "h1", 3, 1, None, "ValueError: [bold]bad[/]", ("Traceback (most recent call last):", "  [x]"), 1.0
    )

    assert root_cause_text(cause).splitlines() == [
        "First failure: h1, rank 3 (exit code 1): ValueError: [bold]bad[/]",
        "  Traceback (most recent call last):",
        "    [x]",
    ]


def test_print_root_cause_of_an_unnamed_signal() -> None:
    cause = RootCause("h1", 3, -9, "signal 9", "killed by signal 9", (), 1.0)

    assert "(signal 9)" in root_cause_text(cause)


@pytest.mark.parametrize(
    ("ranks", "shown"),
    [
        ((), ""),
        ((RankStatus(0, "running"),), "0"),
        (tuple(RankStatus(i, "succeeded", 0) for i in range(8)), "0-7"),
        (
            (RankStatus(0, "ended"), RankStatus(1, "ended"), RankStatus(2, "failed", 1), RankStatus(3, "ended")),
            "0-1:ended 2:exit 1 3:ended",
        ),
        (
            (
                RankStatus(4, "failed", -9, "SIGKILL"),
                RankStatus(5, "failed", -9, "SIGKILL"),
                RankStatus(7, "failed", -9, "SIGKILL"),
            ),
            "4-5:SIGKILL 7:SIGKILL",
        ),
        ((RankStatus(0, "killed"), RankStatus(1, "running")), "0:killed 1"),
    ],
)
def test_rank_cells_group_consecutive_ranks_that_ended_alike(ranks: tuple[RankStatus, ...], shown: str) -> None:
    assert render.rank_cells(ranks) == shown


def test_status_at_80_columns_breaks_no_word(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    ended = (*(RankStatus(i, "ended") for i in range(8)), RankStatus(8, "failed", -9, "SIGKILL"))
    hosts = (
        HostStatus(
            "node-with-long-name-01", "failed", 1, "stopped: node-with-long-name-02 failed", 1.0, 101.0, 0, ended
        ),
        HostStatus("node-with-long-name-02", "unreachable", None, "cannot connect: timed out after 10 s"),
        HostStatus("node3", "lost", None, None, 1.0, 51.0, 2, tuple(RankStatus(i, "running") for i in range(16, 24))),
    )
    render.print_status(JobStatus("train_llm-261121-101500-long", "failed", hosts))

    out = capsys.readouterr().out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    words = set(out.split())
    for whole in ("0-7:ended", "8:SIGKILL", "16-23", "unreachable", "node-with-long-name-01", "lost"):
        assert whole in words, out
