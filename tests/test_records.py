"""Local job records under ``$XDG_STATE_HOME/launcher/jobs``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from launcher.errors import JobNotFoundError, LauncherError
from launcher.hosts.files import Host
from launcher.job.records import JobRecord, all_records, latest_record, load_record, save_record

HOSTS = (
    Host("node1"),
    Host("node2", user="alice", port=2222, slots=8),
    Host("fe80::1", port=22),
    Host("localhost", slots=2),
    Host("gpu-box", user="bob", gpus=(0, 3)),
)


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "state" / "launcher" / "jobs"


def job(name: str, launched_at: float, hosts: tuple[Host, ...] = (Host("node1"),)) -> JobRecord:
    return JobRecord(name=name, hosts=hosts, launched_at=launched_at, script="train.py", python="/usr/bin/python3")


def test_save_and_load_round_trip(jobs_dir: Path) -> None:
    record = JobRecord(
        name="train-231114-221320",
        hosts=HOSTS,
        launched_at=1_700_000_000.125,
        script="my dir/train (v2).py",
        python="/opt/py/bin/python3",
        cwd="/home/alice/ünï project",
        rdzv_endpoint="[fe80::1]:29500",
    )

    path = save_record(record)
    loaded = load_record("train-231114-221320")

    assert loaded == record
    assert isinstance(loaded.hosts, tuple)
    assert loaded.hosts[4].gpus == (0, 3)
    assert path == jobs_dir / "train-231114-221320.json"
    assert [p.name for p in jobs_dir.iterdir()] == ["train-231114-221320.json"]  # no temporary file left


def test_saving_again_replaces_the_record(jobs_dir: Path) -> None:
    save_record(job("again", 1.0))
    save_record(job("again", 2.0, HOSTS))

    assert load_record("again") == job("again", 2.0, HOSTS)
    assert all_records() == [job("again", 2.0, HOSTS)]


def test_load_record_of_an_unknown_job_names_it(jobs_dir: Path) -> None:
    save_record(job("other", 1.0))

    with pytest.raises(JobNotFoundError) as caught:
        load_record("nosuchjob")

    assert "nosuchjob" in str(caught.value)
    assert caught.value.name == "nosuchjob"
    assert caught.value.exit_code == 1


def test_load_record_without_any_state_directory(jobs_dir: Path) -> None:
    with pytest.raises(JobNotFoundError, match="nosuchjob"):
        load_record("nosuchjob")


def test_load_record_of_an_unreadable_record_says_so(jobs_dir: Path) -> None:
    jobs_dir.mkdir(parents=True)
    (jobs_dir / "broken.json").write_text('{"name": "broken", "hosts": [', encoding="utf-8")

    with pytest.raises(JobNotFoundError) as caught:
        load_record("broken")

    assert "'broken'" in str(caught.value)
    assert "unreadable" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"name": "damaged"}', id="no hosts"),
        pytest.param('{"name": "damaged", "hosts": [{"name": "n1", "colour": "red"}]}', id="unknown host field"),
        pytest.param("[]", id="not an object"),
        pytest.param("null", id="null"),
    ],
)
def test_load_record_of_a_damaged_record_is_a_launcher_error(jobs_dir: Path, content: str) -> None:
    jobs_dir.mkdir(parents=True)
    (jobs_dir / "damaged.json").write_text(content, encoding="utf-8")

    with pytest.raises(LauncherError, match="damaged"):
        load_record("damaged")


def test_latest_record_is_the_newest_by_launch_time(jobs_dir: Path) -> None:
    # Saved out of order, and names that sort the other way: only launched_at counts.
    for name, launched_at in [("b-middle", 200.0), ("z-oldest", 100.0), ("a-newest", 300.0), ("m-old", 150.0)]:
        save_record(job(name, launched_at))

    assert latest_record().name == "a-newest"
    assert [r.name for r in all_records()] == ["z-oldest", "m-old", "b-middle", "a-newest"]


def test_latest_record_without_any_job(jobs_dir: Path) -> None:
    with pytest.raises(JobNotFoundError, match="no job has been launched"):
        latest_record()


def test_latest_record_with_an_empty_records_directory(jobs_dir: Path) -> None:
    jobs_dir.mkdir(parents=True)

    with pytest.raises(JobNotFoundError):
        latest_record()


CORRUPT = [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"name": "x", "hosts": [', id="truncated"),
    pytest.param(b"not json", id="not json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not UTF-8"),
    pytest.param(b"[]", id="a list"),
    pytest.param(b"null", id="null"),
    pytest.param(b'"text"', id="a string"),
    pytest.param(b'{"name": "x"}', id="no hosts"),
    pytest.param(b'{"hosts": []}', id="no name"),
    pytest.param(b'{"name": "x", "hosts": [{"name": "n", "colour": "red"}]}', id="unknown host field"),
    pytest.param(b'{"name": "x", "hosts": [{"name": "n", "gpus": 5}]}', id="gpus not a list"),
    pytest.param(b'{"name": "x", "hosts": [], "extra": 1}', id="unknown record field"),
    pytest.param(
        b'{"name": "x", "hosts": [], "launched_at": "yesterday"}',
        id="launched_at not a number",
    ),
]


@pytest.mark.parametrize("content", CORRUPT)
def test_a_corrupt_record_does_not_hide_the_others(jobs_dir: Path, content: bytes) -> None:
    save_record(job("first", 1.0))
    save_record(job("second", 2.0, HOSTS))
    (jobs_dir / "corrupt.json").write_bytes(content)

    assert all_records() == [job("first", 1.0), job("second", 2.0, HOSTS)]
    assert latest_record().name == "second"


def test_files_that_are_not_records_are_ignored(jobs_dir: Path) -> None:
    save_record(job("real", 1.0))
    (jobs_dir / ".real.json.123.tmp").write_text(json.dumps({"name": "tmp", "hosts": []}), encoding="utf-8")
    (jobs_dir / "notes.txt").write_text("hello", encoding="utf-8")
    (jobs_dir / "adir.json").mkdir()

    assert [r.name for r in all_records()] == ["real"]


# --- only this user can read them -------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_records_are_this_users_only_whatever_the_umask(jobs_dir: Path) -> None:
    path = save_record(job("private", 1.0))
    save_record(job("private", 2.0))  # rewritten: still 0600

    assert [mode(p) for p in (jobs_dir.parent, jobs_dir)] == [0o700, 0o700]
    assert mode(path) == 0o600
    assert [p.name for p in jobs_dir.iterdir()] == ["private.json"]


@pytest.mark.usefixtures("umask_022")
def test_a_state_directory_left_open_by_an_older_version_is_tightened(jobs_dir: Path) -> None:
    jobs_dir.mkdir(parents=True)
    for directory in (jobs_dir.parent, jobs_dir):
        directory.chmod(0o755)
    old = jobs_dir / "old.json"
    old.write_text(json.dumps({"name": "old", "hosts": []}), encoding="utf-8")

    save_record(job("new", 1.0))

    assert [mode(p) for p in (jobs_dir.parent, jobs_dir)] == [0o700, 0o700]
    assert mode(jobs_dir / "new.json") == 0o600
    assert [r.name for r in all_records()] == ["old", "new"]  # unreachable by others now, and kept


@pytest.mark.usefixtures("umask_022")
def test_a_state_directory_of_another_user_is_refused_naming_it(
    jobs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = jobs_dir.parent
    top.mkdir(parents=True, mode=0o755)
    top.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)  # as seen by another user

    with pytest.raises(LauncherError) as caught:
        save_record(job("refused", 1.0))

    message = str(caught.value)
    assert message.startswith(f"{top} is readable by other users and cannot be made private (mode 0755, owned by uid")
    assert "\n" not in message
    assert mode(top) == 0o755 and not jobs_dir.exists()  # nothing changed, nothing written
