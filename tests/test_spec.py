"""``make_spec``: one way from a user's inputs to the per-host plan, for the CLI and for Python.

The flag checks run before any host is contacted; the CLI's dry run and a Python caller
with the same inputs must print the very same plan.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.cli import render
from launcher.errors import HostsFileError, UsageError
from launcher.launching.spec import check_nnodes, check_nproc, make_spec
from launcher.launching.start import dry_run
from launcher.protocol.paths import run_dir_shown

REPO = Path(__file__).resolve().parent.parent


def test_the_cli_and_python_give_the_same_plan(tmp_path: Path) -> None:
    (tmp_path / ".launcher_env").write_text("FROM_FILE=1\nSHARED=file\n")
    (tmp_path / "extra.env").write_text("SHARED=extra\n")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "NCCL_", "SLURM_"))}
    environ |= {"NCCL_DEBUG": "INFO", "HF_HOME": "/data/hf", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)}
    environ["PYTHONPATH"] = str(REPO)
    options = ["--hosts", "a,b:4,c", "--exclude", "b", "--name", "same", "--nproc-per-node", "2"]
    options += ["-e", "LR=3e-4", "--env-file", "extra.env", "--torchrun-args", "--monitor-interval 1"]

    cli = subprocess.run(
        [sys.executable, "-m", "launcher", "launch", "--dry-run", *options, "train.py", "--lr", "$(x)"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    printed = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp_path)  # env files are read relative to where the launch is typed
    try:
        spec = make_spec(
            "train.py",
            ["--lr", "$(x)"],
            hosts="a,b:4,c",
            exclude="b",
            name="same",
            nproc_per_node=2,
            assignments=["LR=3e-4"],
            env_files=["extra.env"],
            torchrun_args="--monitor-interval 1",
            cwd=str(tmp_path),
            environ=environ,
        )
        with contextlib.redirect_stdout(printed):
            render.print_dry_run(*dry_run(spec), cwd=spec.cwd)
    finally:
        os.chdir(cwd)

    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == printed.getvalue()
    assert [h.label for h in spec.hosts] == ["a", "c"]
    assert {"NCCL_DEBUG": "INFO", "FROM_FILE": "1", "SHARED": "extra", "LR": "3e-4"}.items() <= spec.env.items()
    assert "NCCL_DEBUG=INFO" in cli.stdout and "--monitor-interval 1" in cli.stdout


def test_sync_to_a_remote_dir_reads_the_projects_launcher_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The env file of the directory being synced, not one this machine has at --remote-dir."""
    project, remote = tmp_path / "project", tmp_path / "remote"
    project.mkdir()
    remote.mkdir()
    (project / ".launcher_env").write_text("FROM=project\n")
    (remote / ".launcher_env").write_text("FROM=remote-dir\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(project)

    spec = make_spec("train.py", hosts="a,b", sync=True, remote_dir=str(remote), environ={})

    assert spec.cwd == str(remote)
    assert spec.env["FROM"] == "project"


def test_the_dry_run_names_each_nodes_own_state_directory() -> None:
    _, plans = dry_run(make_spec("t.py", hosts="a,b", name="j", environ={}))

    log_dir = run_dir_shown("j") + "/torchrun"
    assert log_dir.startswith("${XDG_STATE_HOME:-~/.local/state}/launcher/runs/j/HOSTNAME")
    assert all(log_dir in plan.argv for plan in plans)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (4, "4"), ("8", "8"), (" 2 ", "2"), ("gpu", "gpu"), ("auto", "auto"), ("007", "7")],
)
def test_nproc_per_node_accepted(value: int | str | None, expected: str | None) -> None:
    assert check_nproc(value) == expected


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "", "1025", "٣", "4 gpus"])
def test_nproc_per_node_refused_before_any_host_is_contacted(value: str) -> None:
    with pytest.raises(UsageError, match="--nproc-per-node must be a whole number from 1 to 1024, or gpu, auto or cpu"):
        make_spec("t.py", hosts="unreachable-host-1,unreachable-host-2", nproc_per_node=value, environ={})


@pytest.mark.parametrize(
    ("value", "hosts", "message"),
    [
        ("3", 2, "--nnodes 3 does not fit the 2 host(s) given"),
        ("1:2", 3, "--nnodes 1:2 does not fit the 3 host(s) given"),
        ("2:1", 2, "need 1 <= MIN <= MAX"),
        ("0", 0, "need 1 <= MIN <= MAX"),
        ("x", 2, "--nnodes must be N or MIN:MAX"),
        ("1:", 2, "--nnodes must be N or MIN:MAX"),
    ],
)
def test_nnodes_must_fit_the_hosts(value: str, hosts: int, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_nnodes(value, hosts)


def test_nnodes_that_fit() -> None:
    assert check_nnodes("2", 2) == "2"
    assert check_nnodes("1:4", 3) == "1:4"


def test_torchrun_args_that_do_not_parse() -> None:
    with pytest.raises(UsageError, match="--torchrun-args '--x \"open' does not parse: No closing quotation"):
        make_spec("t.py", torchrun_args='--x "open', environ={})


def test_bad_job_names_and_ports_and_hosts() -> None:
    with pytest.raises(UsageError, match="bad job name"):
        make_spec("t.py", name="a b", environ={})
    with pytest.raises(UsageError, match="--rdzv-port must be a port"):
        make_spec("t.py", rdzv_port=70000, environ={})
    with pytest.raises(HostsFileError, match="no hosts given"):
        make_spec("t.py", hosts=[], environ={})
    with pytest.raises(UsageError, match="no script given"):
        make_spec(" ", environ={})
