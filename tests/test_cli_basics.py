"""The command line without any host: start-up cost, the public API, and error paths.

Every command here fails (or prints help) before it would contact a host, so these tests
run in subprocesses with a private ``HOME`` and ``XDG_STATE_HOME`` and never touch SSH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import launcher

REPO = Path(__file__).resolve().parent.parent
HEAVY_MODULES = ("torch", "asyncssh", "libtmux", "psutil")


def python_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SLURM_", "PYTHON"))}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), PYTHONPATH=str(REPO))
    return env


def run_launcher(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=home,
        env=python_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    directory = tmp_path / "home"
    directory.mkdir()
    return directory


# --- start-up -------------------------------------------------------------------------------

MODULES_AFTER = """
import json, runpy, sys
sys.argv = {argv!r}
code = None
if sys.argv:
    try:
        runpy.run_module("launcher", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
with open({out!r}, "w") as fh:
    json.dump({{"exit": code, "modules": sorted(sys.modules)}}, fh)
"""


def modules_after(home: Path, argv: list[str]) -> tuple[object, set[str]]:
    """Exit code and top-level packages imported by ``launcher <argv>`` (no argv: a bare interpreter)."""
    out = home / "modules.json"
    code = MODULES_AFTER.format(argv=argv, out=str(out))
    subprocess.run(
        [sys.executable, "-c", code], cwd=home, env=python_env(home), capture_output=True, timeout=60, check=True
    )
    result = json.loads(out.read_text(encoding="utf-8"))
    return result["exit"], {name.partition(".")[0] for name in result["modules"]}


@pytest.fixture(scope="module")
def bare_interpreter_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What a bare interpreter imports here, in case a site hook imports something at start-up."""
    return modules_after(tmp_path_factory.mktemp("bare"), [])[1]


@pytest.mark.parametrize("args", [["--help"], ["launch", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(home: Path, bare_interpreter_modules: set[str], args: list[str]) -> None:
    exit_code, imported = modules_after(home, ["launcher", *args])

    assert exit_code == 0
    assert "click" in imported  # the probe did see the CLI run
    assert sorted(set(HEAVY_MODULES) & (imported - bare_interpreter_modules)) == []


def test_python_m_launcher_help(home: Path) -> None:
    result = run_launcher(home, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: launcher")
    for command in ("launch", "status", "logs", "kill", "list"):
        assert f"  {command} " in result.stdout
    assert result.stderr == ""


# --- public API ----------------------------------------------------------------------------

PUBLIC_API = [
    "AgentError",
    "AuthenticationError",
    "ConnectionLostError",
    "ContextError",
    "Host",
    "HostError",
    "HostKeyError",
    "HostKill",
    "HostStatus",
    "HostsFileError",
    "Job",
    "JobError",
    "JobFailed",
    "JobNotFoundError",
    "JobRecord",
    "JobResult",
    "JobRunningError",
    "JobStatus",
    "JobTimeoutError",
    "LaunchSpec",
    "LauncherError",
    "LogLine",
    "NodePlan",
    "NodeRefusedError",
    "NotPicklableError",
    "RankStatus",
    "RootCause",
    "RunContext",
    "ScriptMissingError",
    "SshOptions",
    "StartFailedError",
    "TmuxMissingError",
    "UnreachableError",
    "UsageError",
    "VersionMismatchError",
    "WorkdirMissingError",
    "__version__",
    "all_records",
    "context",
    "dry_run",
    "follow_logs",
    "job_status",
    "jobs",
    "kill_all_jobs",
    "kill_job",
    "latest_record",
    "launch",
    "launch_job",
    "load_record",
    "make_spec",
    "parse_hosts_file",
    "read_logs",
    "resolve_hosts",
    "run",
    "submit",
    "wait_for_end",
]


def test_public_api_is_pinned() -> None:
    assert launcher.__all__ == PUBLIC_API
    assert sorted(PUBLIC_API) == PUBLIC_API


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(launcher, name)

    assert value is not None
    if name != "__version__":
        assert value.__name__ == name
        assert value.__module__.startswith("launcher.")
        doc = value.__doc__ or ""
        assert doc.strip() and not doc.startswith(f"{name}("), f"{name} has no docstring of its own"


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = launcher.no_such_thing


def test_public_errors_are_launcher_errors() -> None:
    errors = [name for name in PUBLIC_API if name.endswith("Error")]
    assert len(errors) == 21
    for name in errors:
        assert issubclass(getattr(launcher, name), launcher.LauncherError)


def test_the_package_ships_its_types() -> None:
    assert (Path(launcher.__file__).parent / "py.typed").is_file()


# --- error paths -----------------------------------------------------------------------------


def assert_one_error_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert result.returncode == exit_code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert result.stdout == ""
    return lines[0]


def test_launch_with_a_missing_hosts_file(home: Path) -> None:
    missing = home / "no_such_hosts"

    line = assert_one_error_line(run_launcher(home, "launch", "--hosts", str(missing), "x.py"), 2)

    assert str(missing) in line
    assert "not found" in line


def test_launch_with_a_bad_hosts_file_line_names_file_and_line(home: Path) -> None:
    hosts = home / "hosts"
    hosts.write_text("node1\nnode2 slots=4\nnode3 colour=red\nnode4\n", encoding="utf-8")

    line = assert_one_error_line(run_launcher(home, "launch", "--hosts", str(hosts), "x.py"), 2)

    assert f"{hosts}:3:" in line
    assert "colour" in line


def test_launch_with_a_bad_env_assignment(home: Path) -> None:
    line = assert_one_error_line(run_launcher(home, "launch", "-e", "NOEQUALS", "x.py"), 2)

    assert "NOEQUALS" in line


def test_an_unreachable_host_is_one_line_whatever_asyncssh_warns(home: Path) -> None:
    # The launch imports asyncssh, whose dependencies warn at import with today's versions
    # (cryptography 51: DSA deprecated, five warnings of two lines each).
    line = assert_one_error_line(run_launcher(home, "launch", "--hosts", "[127.0.0.1]:1,", "x.py"), 1)

    assert "127.0.0.1" in line


def test_asyncssh_is_imported_without_warnings() -> None:
    # -W error: a warning at import would be an exception here.
    code = "from launcher.transport.ssh_library import asyncssh_module; asyncssh_module().connect"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_status_of_an_unknown_job(home: Path) -> None:
    line = assert_one_error_line(run_launcher(home, "status", "nosuchjob"), 1)

    assert "nosuchjob" in line


def test_kill_with_a_bad_job_name(home: Path) -> None:
    line = assert_one_error_line(run_launcher(home, "kill", "bad name!"), 2)

    assert "'bad name!'" in line


def test_logs_before_any_launch(home: Path) -> None:
    result = run_launcher(home, "logs")

    assert result.returncode != 0
    assert "no job has been launched" in assert_one_error_line(result, result.returncode)


def test_list_before_any_launch_prints_nothing(home: Path) -> None:
    result = run_launcher(home, "list")

    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_status_of_a_damaged_record(home: Path) -> None:
    jobs = home / "state" / "launcher" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "damaged.json").write_text('{"name": "damaged"}', encoding="utf-8")

    line = assert_one_error_line(run_launcher(home, "status", "damaged"), 1)

    assert "damaged" in line


# --- the commands launch prints ---------------------------------------------------------------


def test_printed_commands_work_where_launcher_is_not_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pip install into pyenv's interpreter makes no ``launcher`` shim: print what works."""
    from launcher.cli.common import command_name

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert command_name() == "python3 -m launcher"
    printed = subprocess.run(
        [*command_name().split(), "--version"], capture_output=True, text=True, timeout=60, env=python_env(tmp_path)
    )
    assert printed.returncode == 0 and launcher.__version__ in printed.stdout

    (bin_dir / "launcher").write_text("#!/bin/sh\n")
    (bin_dir / "launcher").chmod(0o755)
    assert command_name() == "launcher"
