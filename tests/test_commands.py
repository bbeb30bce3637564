"""The torchrun command line, the job's environment, job names and ``-e`` (pure, table-driven)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from launcher.errors import LauncherError, UsageError
from launcher.launching.commands import (
    Runner,
    check_job_name,
    default_job_name,
    job_env,
    node_command,
    rdzv_endpoint,
    script_file,
)
from launcher.launching.environment import parse_assignment as parse_env_assignment
from launcher.protocol.base import RANK_PREFIX_TEMPLATE

# --- torchrun_argv ------------------------------------------------------------------------


def argv_for(*, is_host: bool = False, script: str = "train.py", script_args: tuple[str, ...] = ()) -> list[str]:
    return torchrun_argv(is_host=is_host, script=script, script_args=script_args)


def torchrun_argv(*, is_host: bool, script: str, script_args: Sequence[str], **overrides: Any) -> list[str]:
    options: dict[str, Any] = {
        "runner": "torchrun",
        "python": "/opt/py/bin/python3",
        "nnodes": 3,
        "nnodes_spec": None,
        "node_rank": 0 if is_host else 1,
        "nproc_per_node": "4",
        "endpoint": ("10.0.0.1", 29500),
        "job": "train-231114-221320",
        "log_dir": "/home/u/.local/state/launcher/runs/train-231114-221320/h0/torchrun",
        "script": script,
        "script_args": script_args,
        "max_restarts": 0,
        "torchrun_args": (),
    }
    options.update(overrides)
    command = node_command(**options)
    assert command.env == {}
    return command.argv


TORCHRUN_OPTIONS = [
    "/opt/py/bin/python3",
    "-m",
    "torch.distributed.run",
    "--nnodes",
    "3",
    "--nproc-per-node",
    "4",
    "--rdzv-backend",
    "c10d",
    "--rdzv-endpoint",
    "10.0.0.1:29500",
    "--rdzv-id",
    "train-231114-221320",
    "--rdzv-conf",
]
TORCHRUN_TAIL_OPTIONS = [
    "--max-restarts",
    "0",
    "--log-dir",
    "/home/u/.local/state/launcher/runs/train-231114-221320/h0/torchrun",
    "--tee",
    "3",
]


@pytest.mark.parametrize("is_host", [False, True])
def test_torchrun_argv_is_the_exact_list(is_host: bool) -> None:
    expected = [
        *TORCHRUN_OPTIONS,
        "is_host=1" if is_host else "is_host=0",
        *TORCHRUN_TAIL_OPTIONS,
        "train.py",
        "--lr",
        "0.1",
    ]

    assert argv_for(is_host=is_host, script_args=("--lr", "0.1")) == expected


def test_only_the_first_node_serves_the_store() -> None:
    argvs = [argv_for(is_host=index == 0) for index in range(3)]

    assert ["is_host=1" in argv for argv in argvs] == [True, False, False]
    assert all(sum(item.startswith("is_host=") for item in argv) == 1 for argv in argvs)


HOSTILE_SCRIPT_ARGS = [
    pytest.param((), id="none"),
    pytest.param(("",), id="empty string"),
    pytest.param(("a b", "  padded  "), id="spaces"),
    pytest.param(("it's", '"double"', "'single'"), id="quotes"),
    pytest.param(("$(rm -rf ~)", "`id`", "$HOME", "${PATH}"), id="shell expansions"),
    pytest.param(("; ls", "&& echo x", "| cat", "> out", "*", "~"), id="shell operators"),
    pytest.param(("line1\nline2", "tab\there", "cr\rhere"), id="control characters"),
    pytest.param(("ünïcödé", "日本語", "emoji-🚀"), id="unicode"),
    pytest.param(("--nnodes", "8", "-m", "--", "--rdzv-endpoint=evil:1", "-"), id="leading dashes"),
    pytest.param(("\\", "\\n", "%s", "{}", "\x1e0\x1f"), id="escapes and separators"),
]


@pytest.mark.parametrize("script_args", HOSTILE_SCRIPT_ARGS)
def test_script_args_pass_through_untouched_after_the_script(script_args: tuple[str, ...]) -> None:
    argv = argv_for(script_args=script_args)

    script_at = argv.index("train.py")
    assert argv[script_at + 1 :] == list(script_args)
    assert argv[:script_at] == [*TORCHRUN_OPTIONS, "is_host=0", *TORCHRUN_TAIL_OPTIONS]


@pytest.mark.parametrize("script", ["train.py", "my dir/train (v2).py", "/abs/path/$(x)/t.py", "ünï.py"])
def test_the_script_is_one_item_right_after_the_options(script: str) -> None:
    argv = argv_for(script=script, script_args=("x",))

    assert argv[-2:] == [script, "x"]


def test_torchrun_argv_accepts_any_sequence_of_script_args() -> None:
    assert argv_for(script_args=("a", "b")) == torchrun_argv(is_host=False, script="train.py", script_args=["a", "b"])


def test_elastic_and_extra_torchrun_options_go_before_the_script() -> None:
    argv = torchrun_argv(
        is_host=False,
        script="train.py",
        script_args=("--x",),
        nnodes_spec="2:4",
        max_restarts=3,
        torchrun_args=("--monitor-interval", "1"),
    )
    assert argv[argv.index("--nnodes") + 1] == "2:4"
    assert argv[argv.index("--max-restarts") + 1] == "3"
    assert argv[-4:] == ["--monitor-interval", "1", "train.py", "--x"]


@pytest.mark.parametrize(
    ("runner", "head"), [("python", ["/opt/py/bin/python3", "-u", "train.py"]), ("exec", ["train.py"])]
)
def test_python_and_exec_runners_get_the_rendezvous_in_their_environment(runner: str, head: list[str]) -> None:
    command = node_command(
        runner=runner,  # type: ignore[arg-type]
        python="/opt/py/bin/python3",
        nnodes=3,
        nnodes_spec=None,
        node_rank=2,
        nproc_per_node="4",
        endpoint=("fe80::1", 29500),
        job="j",
        log_dir="/l",
        script="train.py",
        script_args=("a b", "$x"),
        max_restarts=0,
        torchrun_args=(),
    )
    assert command.argv == [*head, "a b", "$x"]
    assert command.env == {
        "MASTER_ADDR": "fe80::1",
        "MASTER_PORT": "29500",
        "NODE_RANK": "2",
        "NNODES": "3",
        "NPROC_PER_NODE": "4",
        "WORLD_SIZE": "12",
    }


# --- rdzv_endpoint ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("10.0.0.1", 29500, "10.0.0.1:29500"),
        ("127.0.0.1", 1, "127.0.0.1:1"),
        ("node1", 29500, "node1:29500"),
        ("node-1.example.com", 65535, "node-1.example.com:65535"),
        ("::1", 29500, "[::1]:29500"),
        ("fe80::1", 2222, "[fe80::1]:2222"),
        ("2001:db8::5:1", 29500, "[2001:db8::5:1]:29500"),
        ("::ffff:10.0.0.1", 29500, "[::ffff:10.0.0.1]:29500"),
    ],
)
def test_rdzv_endpoint(address: str, port: int, expected: str) -> None:
    assert rdzv_endpoint(address, port) == expected


# --- job_env ------------------------------------------------------------------------------

LOG_DIR = "/runs/my job/h0/torchrun"


def test_job_env_defaults() -> None:
    assert job_env({}, LOG_DIR) == {
        "OMP_NUM_THREADS": "1",
        "TORCHELASTIC_ERROR_FILE": "/runs/my job/h0/torchrun/error.json",
        "TORCH_FR_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_FR_DUMP_TEMP_FILE": "/runs/my job/h0/nccl_trace_rank_",
        "TORCH_NCCL_DEBUG_INFO_PIPE_FILE": "/runs/my job/h0/nccl_pipe_",
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": RANK_PREFIX_TEMPLATE,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.parametrize(
    ("user", "gone"),
    [
        ({"TORCH_FR_BUFFER_SIZE": "0"}, None),
        ({"TORCH_NCCL_TRACE_BUFFER_SIZE": "0"}, "TORCH_FR_BUFFER_SIZE"),
        ({"TORCH_FR_DUMP_TEMP_FILE": "/mine/fr_"}, None),
        ({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/mine/fr_"}, "TORCH_FR_DUMP_TEMP_FILE"),
        ({"TORCH_NCCL_DUMP_ON_TIMEOUT": "0"}, None),
        ({"TORCH_NCCL_DEBUG_INFO_PIPE_FILE": "/mine/pipe_"}, None),
    ],
)
def test_the_users_flight_recorder_settings_win(user: dict[str, str], gone: str | None) -> None:
    env = job_env(user, LOG_DIR)
    for key, value in user.items():
        assert env[key] == value
    if gone is not None:  # torch's other name for it: ours would shadow the user's
        assert gone not in env


@pytest.mark.parametrize(
    ("key", "value"),
    [("OMP_NUM_THREADS", "8"), ("TORCHELASTIC_ERROR_FILE", "/elsewhere/error.json"), ("OMP_NUM_THREADS", "")],
)
def test_job_env_defaults_yield_to_the_user(key: str, value: str) -> None:
    assert job_env({key: value}, LOG_DIR)[key] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "[${rank}] "),
        ("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", ""),
        ("PYTHONUNBUFFERED", "0"),
        ("PYTHONUNBUFFERED", ""),
    ],
)
def test_job_env_keeps_what_the_launcher_relies_on(key: str, value: str) -> None:
    env = job_env({key: value}, LOG_DIR)

    assert env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == RANK_PREFIX_TEMPLATE
    assert env["PYTHONUNBUFFERED"] == "1"


def test_rank_prefix_is_torchrun_template_with_control_characters() -> None:
    assert RANK_PREFIX_TEMPLATE == "\x1e${rank}\x1f"


def test_job_env_passes_user_values_byte_exact_and_leaves_the_input_alone() -> None:
    user = {"A": "x=y", "B": "line1\nline2", "C": "", "D": " $(id) `id` 'q' \"q\" ", "E": "ünï"}
    before = dict(user)

    env = job_env(user, LOG_DIR)

    assert {key: env[key] for key in user} == user
    assert user == before


# --- check_job_name -----------------------------------------------------------------------

GOOD_NAMES = ["a", "Z", "0", "a1", "train-231114-221320", "my_job", "a-", "a_", "9-lives", "x" * 80]
BAD_NAMES = [
    "",
    " ",
    "a b",
    " a",
    "a ",
    ".",
    "..",
    "a.b",
    "a:b",
    "a/b",
    "../etc",
    "$x",
    "a$b",
    "$(id)",
    "`id`",
    "a;b",
    "a*",
    "-a",
    "--help",
    "_a",
    "a\n",
    "a\tb",
    "a\x00",
    "ä",
    "jöb",
    "x" * 81,
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_job_name_accepts(name: str) -> None:
    assert check_job_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_job_name_rejects(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_job_name(name)

    assert repr(name) in str(caught.value)
    assert isinstance(caught.value, LauncherError)
    assert caught.value.exit_code == 2


# --- default_job_name ---------------------------------------------------------------------

NOW = 1_700_000_000.0
"""2023-11-14 22:13:20 UTC."""


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("script", "stem"),
    [
        ("train.py", "train"),
        ("/abs/path/to/train.py", "train"),
        ("rel/dir/train.py", "train"),
        ("train", "train"),
        ("model.tar.gz", "model-tar"),
        ("my train (v2).py", "my-train-v2"),
        ("$(rm -rf ~).py", "rm--rf"),
        ("--x.py", "x"),
        ("_private_.py", "private"),
        ("ünï.py", "n"),
        ("日本.py", "job"),
        (".py", "py"),
        ("..py", "job"),
        ("", "job"),
        ("/", "job"),
        ("a" * 100 + ".py", "a" * 48),
    ],
)
def test_default_job_name(utc: None, script: str, stem: str) -> None:
    name = default_job_name(script, now=NOW)

    assert name == f"{stem}-231114-221320"
    assert check_job_name(name) == name


def test_default_job_name_is_fixed_for_a_fixed_time(utc: None) -> None:
    assert default_job_name("train.py", now=NOW) == default_job_name("train.py", now=NOW)
    assert default_job_name("train.py", now=NOW + 1) == "train-231114-221321"


@pytest.mark.parametrize("script", ["train.py", "my train (v2).py", "x" * 300, "-" * 60 + "a" * 60 + ".py", "\n.py"])
def test_default_job_name_now_is_a_valid_name(script: str) -> None:
    name = default_job_name(script)

    assert check_job_name(name) == name
    assert re.fullmatch(r".+-\d{6}-\d{6}", name)


# --- parse_env_assignment -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1", ("A", "1")),
        ("A=", ("A", "")),
        ("A==", ("A", "=")),
        ("A=b=c", ("A", "b=c")),
        ("A= padded ", ("A", " padded ")),
        ("A=line1\nline2\n", ("A", "line1\nline2\n")),
        ("A=$(id) `id` 'q' \"q\"", ("A", "$(id) `id` 'q' \"q\"")),
        ("A=ünï 🚀", ("A", "ünï 🚀")),
        ("lower_case=1", ("lower_case", "1")),
        ("_A1=x", ("_A1", "x")),
        ("CUDA_VISIBLE_DEVICES=0,1", ("CUDA_VISIBLE_DEVICES", "0,1")),
    ],
)
def test_parse_env_assignment(text: str, expected: tuple[str, str]) -> None:
    assert parse_env_assignment(text) == expected


@pytest.mark.parametrize(
    "text",
    ["NOEQUALS", "", "=x", "=", "1A=x", "A-B=x", "A B=x", " A=x", "A =x", "A.B=x", "ä=x", "A\n=x", "$A=x", "-e=x"],
)
def test_parse_env_assignment_rejects(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_env_assignment(text)

    assert repr(text) in str(caught.value)


@pytest.mark.parametrize(
    ("runner", "script", "torchrun_args", "expected"),
    [
        ("torchrun", "train.py", (), "train.py"),
        ("python", "sub/train.py", (), "sub/train.py"),
        ("torchrun", "pkg.train", ("--module",), None),
        ("torchrun", "pkg.train", ("-m",), None),
        ("torchrun", "nvidia-smi", ("--no-python",), None),
        ("torchrun", "train.py", ("--monitor-interval", "1"), "train.py"),
        ("exec", "nvidia-smi", (), None),
    ],
)
def test_script_file_is_checked_only_where_it_names_a_file(
    runner: Runner, script: str, torchrun_args: tuple[str, ...], expected: str | None
) -> None:
    assert script_file(runner, script, torchrun_args) == expected
