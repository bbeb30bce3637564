"""The job's environment: forwarded variables, env files, ``-e``, and masking for display."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.errors import UsageError
from launcher.launching.environment import ENV_FILE_NAME, forwarded_env, masked, read_env_file, user_env

# --- forwarded_env -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "NCCL_DEBUG",
        "NCCL_SOCKET_IFNAME",
        "PYTHONPATH",
        "PYTHONFAULTHANDLER",
        "CUDA_LAUNCH_BLOCKING",
        "CUDA_DEVICE_ORDER",
        "TORCH_DISTRIBUTED_DEBUG",
        "TORCHINDUCTOR_CACHE_DIR",
        "PYTORCH_CUDA_ALLOC_CONF",
        "HF_HOME",
        "HF_TOKEN",
        "ACCELERATE_MIXED_PRECISION",
        "OMP_NUM_THREADS",
        "LD_LIBRARY_PATH",
        "PATH",
        "VIRTUAL_ENV",
    ],
)
def test_forwarded(name: str) -> None:
    assert forwarded_env({name: "x y $z"}) == {name: "x y $z"}


@pytest.mark.parametrize(
    "name",
    [
        "PATHX",
        "MY_PATH",
        "path",
        "nccl_debug",
        "HOME",
        "USER",
        "SSH_AUTH_SOCK",
        "AWS_SECRET_ACCESS_KEY",
        "OMP_NUM_THREADS_X",
        "XNCCL_DEBUG",
        "HFHOME",
        "CUDA",
        "CUDA_VISIBLE_DEVICES",  # the launching machine's GPU choice, not every host's
        "VIRTUAL_ENV_PROMPT",
        "",
    ],
)
def test_not_forwarded(name: str) -> None:
    assert forwarded_env({name: "1"}) == {}


def test_forwarded_keeps_values_byte_for_byte() -> None:
    environ = {"PATH": "/a b:/c'd", "HOME": "/root", "NCCL_DEBUG": "", "HF_HOME": "☃\t$(x)"}

    assert forwarded_env(environ) == {"PATH": "/a b:/c'd", "NCCL_DEBUG": "", "HF_HOME": "☃\t$(x)"}


# --- read_env_file -------------------------------------------------------------------------


def env_file(tmp_path: Path, text: str, name: str = "job.env") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("\n\n   \n\t\n", {}),
        ("# only a comment\n   # indented comment\n", {}),
        ("A=1", {"A": "1"}),
        ("A=1\nB=2\n", {"A": "1", "B": "2"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("export A=1", {"A": "1"}),
        ("  export   A=1", {"A": "1"}),
        ("export=1", {"export": "1"}),
        ("exported_var=1", {"exported_var": "1"}),
        ("A=b=c==", {"A": "b=c=="}),
        ("A=", {"A": ""}),
        ('A="quoted value"', {"A": '"quoted value"'}),
        ("A='single'", {"A": "'single'"}),
        ("A=a b  c", {"A": "a b  c"}),
        ("A= leading", {"A": " leading"}),
        ("A=v # not a comment", {"A": "v # not a comment"}),
        ("A=$HOME $(whoami) `id` ${X:-y}", {"A": "$HOME $(whoami) `id` ${X:-y}"}),
        ("A=☃ ünï", {"A": "☃ ünï"}),
        ("_under=1\nlower_case9=2", {"_under": "1", "lower_case9": "2"}),
        ("A=1\nA=2", {"A": "2"}),
        ("# c\n\nA=1\n# c2\nB=x=y\n", {"A": "1", "B": "x=y"}),
    ],
)
def test_read_env_file(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    assert read_env_file(env_file(tmp_path, text)) == expected


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("NOEQUALS", 1),
        ("A=1\n\n# c\nNOEQUALS\n", 4),
        ("=value", 1),
        ("1KEY=x", 1),
        ("KEY WITH SPACE=x", 1),
        ("KEY =x", 1),
        ("KEY-DASH=1", 1),
        ("A=1\nexport", 2),
        ("A.B=1", 1),
        ("$(rm -rf ~)=1", 1),
        ("ünï=1", 1),
    ],
)
def test_a_bad_line_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = env_file(tmp_path, text)

    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}:{line}: expected KEY=VALUE"):
        read_env_file(path)


@pytest.mark.parametrize("make", ["missing", "directory", "not-utf8"])
def test_an_unreadable_file_is_a_usage_error(tmp_path: Path, make: str) -> None:
    path = tmp_path / "job.env"
    if make == "directory":
        path.mkdir()
    elif make == "not-utf8":
        path.write_bytes(b"A=\xff\xfe\n")

    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}: "):
        read_env_file(path)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        read_env_file(tmp_path / "nope.env")


# --- user_env ------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A working directory and a home directory, both without ``.launcher_env`` yet."""
    cwd, home = tmp_path / "work", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return cwd, home


ENVIRON = {"NCCL_DEBUG": "INFO", "A": "from-shell", "HOME": "/root", "PATH": "/usr/bin"}


def test_forwarded_only(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs

    assert user_env(environ=ENVIRON, cwd=str(cwd)) == {"NCCL_DEBUG": "INFO", "PATH": "/usr/bin"}
    assert user_env(environ=ENVIRON, cwd=str(cwd), forward=False) == {}


def test_later_sources_win(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, _ = dirs
    env_file(cwd, "NCCL_DEBUG=WARN\nA=cwd\nB=cwd\nC=cwd\nD=cwd\n", name=ENV_FILE_NAME)
    first = env_file(tmp_path, "B=first\nC=first\nD=first\n", name="first.env")
    second = env_file(tmp_path, "C=second\nD=second\n", name="second.env")

    env = user_env(environ=ENVIRON, cwd=str(cwd), env_files=[str(first), str(second)], assignments=["D=cli=1"])

    assert env == {"NCCL_DEBUG": "WARN", "PATH": "/usr/bin", "A": "cwd", "B": "first", "C": "second", "D": "cli=1"}


def test_env_files_apply_in_the_order_given(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, _ = dirs
    one = env_file(tmp_path, "X=1", name="one.env")
    two = env_file(tmp_path, "X=2", name="two.env")

    assert user_env(environ={}, cwd=str(cwd), env_files=[str(one), str(two)]) == {"X": "2"}
    assert user_env(environ={}, cwd=str(cwd), env_files=[str(two), str(one)]) == {"X": "1"}


def test_later_assignments_win(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs

    env = user_env(environ=ENVIRON, cwd=str(cwd), assignments=["NCCL_DEBUG=TRACE", "E=1", "E=2"], forward=True)

    assert env == {"NCCL_DEBUG": "TRACE", "PATH": "/usr/bin", "E": "2"}


def test_the_launching_shells_gpu_choice_stays_here_but_e_sets_it(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    environ = {"CUDA_VISIBLE_DEVICES": "3", "CUDA_LAUNCH_BLOCKING": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    assert user_env(environ=environ, cwd=str(cwd)) == {"CUDA_LAUNCH_BLOCKING": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (
        user_env(environ=environ, cwd=str(cwd), assignments=["CUDA_VISIBLE_DEVICES=0,1"])["CUDA_VISIBLE_DEVICES"]
        == "0,1"
    )


def test_home_env_file_when_cwd_has_none(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    env_file(home, "NCCL_DEBUG=HOME\nH=1\n", name=ENV_FILE_NAME)

    assert user_env(environ=ENVIRON, cwd=str(cwd)) == {"NCCL_DEBUG": "HOME", "PATH": "/usr/bin", "H": "1"}


def test_cwd_env_file_hides_homes(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    env_file(home, "H=1\nC=home\n", name=ENV_FILE_NAME)
    env_file(cwd, "C=cwd\n", name=ENV_FILE_NAME)

    assert user_env(environ={}, cwd=str(cwd)) == {"C": "cwd"}


def test_a_directory_named_like_the_env_file_is_not_one(dirs: tuple[Path, Path]) -> None:
    cwd, home = dirs
    (cwd / ENV_FILE_NAME).mkdir()
    env_file(home, "H=1\n", name=ENV_FILE_NAME)

    assert user_env(environ={}, cwd=str(cwd)) == {"H": "1"}


def test_no_forwarding_still_reads_files(dirs: tuple[Path, Path]) -> None:
    cwd, _ = dirs
    env_file(cwd, "F=1\n", name=ENV_FILE_NAME)

    assert user_env(environ=ENVIRON, cwd=str(cwd), assignments=["E=2"], forward=False) == {"F": "1", "E": "2"}


def test_errors_in_sources(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, _ = dirs
    with pytest.raises(UsageError, match="not found"):
        user_env(environ={}, cwd=str(cwd), env_files=[str(tmp_path / "missing.env")])
    with pytest.raises(UsageError, match="bad -e"):
        user_env(environ={}, cwd=str(cwd), assignments=["NOEQUALS"])
    env_file(cwd, "A=1\nbad line\n", name=ENV_FILE_NAME)
    with pytest.raises(UsageError, match=rf"{re.escape(ENV_FILE_NAME)}:2:"):
        user_env(environ={}, cwd=str(cwd))


# --- masked --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "HF_TOKEN",
        "hf_token",
        "WANDB_API_KEY",
        "api_key",
        "DB_PASSWORD",
        "Password",
        "MY_SECRET",
        "aws_secret_access_key",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ],
)
def test_secrets_are_masked(name: str) -> None:
    assert masked({name: "s3cr3t value"}) == {name: "****"}


@pytest.mark.parametrize("name", ["HF_TOKEN", "API_KEY", "PASSWORD", "SECRET"])
def test_empty_secrets_show_as_empty(name: str) -> None:
    assert masked({name: ""}) == {name: ""}


def test_other_values_are_shown_and_the_input_is_kept() -> None:
    env = {"NCCL_DEBUG": "INFO", "PATH": "/a b", "HF_TOKEN": "abc", "TOKE": "x"}

    assert masked(env) == {"NCCL_DEBUG": "INFO", "PATH": "/a b", "HF_TOKEN": "****", "TOKE": "x"}
    assert env["HF_TOKEN"] == "abc"
