"""The local record of launched jobs, so ``logs``, ``status`` and ``kill`` find them by name.

Only this user's: ``<state>/launcher`` and ``jobs/`` are 0700, each record 0600, whatever the
umask (``launcher.protocol.private``, which the nodes' run directories use too).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from launcher.errors import JobNotFoundError, LauncherError
from launcher.hosts.files import Host
from launcher.protocol import private
from launcher.protocol.paths import records_dir


@dataclass(frozen=True)
class JobRecord:
    """A job as launched from this machine."""

    name: str
    hosts: tuple[Host, ...]
    launched_at: float = 0.0
    script: str = ""
    python: str = ""
    cwd: str = ""
    rdzv_endpoint: str | None = None
    """``address:port`` of the c10d store on the first host."""
    last_state: str | None = None
    """The job's state when last asked (status, kill, --wait), for ``launcher list``."""
    code: str | None = None
    """Which code it runs (``launch --sync``): ``git <commit>``, ``git <commit>+<hash of the
    uncommitted changes>``, or ``tree <manifest hash>``."""
    code_digest: str | None = None
    """The manifest hash of the tree sent; ``code_hosts`` holds what each host reported."""
    code_hosts: dict[str, str] = field(default_factory=dict)
    slurm_job_id: str | None = None
    """The SLURM job that runs it (``launcher sbatch --submit``): ``kill`` goes through scancel."""
    attempt: int = 1
    """Which attempt runs on ``hosts`` now: 1 at launch, one more at each restart (``--restarts``)."""
    restarts: int = 0
    """How many restarts ``launch --restarts`` allows in all (0: none, no watcher)."""
    spares: tuple[Host, ...] = ()
    """The spares not yet taken into the job (``--spares``), in the order given."""
    left_out: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Hosts left out of the job, by label: ``reason``, ``at`` (epoch), ``times`` (how often),
    ``until`` (epoch: not taken again before; doubles with each repeat)."""
    attempts: tuple[dict[str, Any], ...] = ()
    """One entry per attempt: ``number``, ``hosts`` (labels), ``started_at``, and once ended
    ``ended_at``, ``state``, ``cause`` (its first failure, one line)."""
    watcher: dict[str, Any] | None = None
    """The process that recovers the job (``pid``, ``since``: its start, ``log``); None without ``--restarts``."""
    recovery: str | None = None
    """What the watcher does or did last, one line (``watching``, ``restarting: ...``, ``gave up: ...``)."""


def unique_job_name(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``...: unique among the jobs launched from here (two
    launches in the same second get the same default name)."""
    taken = {record.name for record in all_records()}
    return next(name for name in (base, *(f"{base}-{n}" for n in range(2, 10_000))) if name not in taken)


def make_records_dir() -> Path:
    """``records_dir()``, made or tightened to 0700 from ``<state>/launcher`` down: before a
    launch, so that a state directory open to others and not ours stops it before anything runs.

    LauncherError names that directory."""
    directory = records_dir()
    try:
        return private.make_dirs(directory.parent, directory.name)
    except private.NotPrivateError as exc:
        raise LauncherError(str(exc)) from None


def save_record(record: JobRecord) -> Path:
    path = make_records_dir() / f"{record.name}.json"
    private.write_file(path, json.dumps(asdict(record), indent=1).encode("utf-8"))
    return path


def remember_state(record: JobRecord, state: str) -> None:
    """Note the job's last known state in its record, if it has one here."""
    if (records_dir() / f"{record.name}.json").exists():
        update_record(record.name, last_state=state)


def update_record(name: str, **changes: Any) -> JobRecord:
    """Change job ``name``'s record as it is now on disk (a job's watcher, ``status`` and
    ``kill`` write it too): the record as saved."""
    record = replace(load_record(name), **changes)
    save_record(record)
    return record


def load_record(name: str) -> JobRecord:
    """The local record of job ``name``; JobNotFoundError if there is none."""
    path = records_dir() / f"{name}.json"
    try:
        return _from_json(json.loads(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, NotADirectoryError):
        raise JobNotFoundError(name) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobNotFoundError(name, f"the record of job {name!r} is unreadable ({path}: {exc})") from None


def all_records() -> list[JobRecord]:
    """Every job launched from here whose record is readable, oldest first."""
    directory = records_dir()
    records = []
    for path in directory.glob("*.json") if directory.is_dir() else ():
        try:
            records.append(_from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record must not hide the others
    return sorted(records, key=lambda r: r.launched_at)


def latest_record() -> JobRecord:
    """The job launched last from this machine."""
    records = all_records()
    if not records:
        raise JobNotFoundError(None, "no job has been launched from here yet (name one with --hosts FILE NAME)")
    return records[-1]


def _from_json(data: Any) -> JobRecord:
    """Rebuild a record, checking types: a damaged file raises ValueError/KeyError/TypeError."""
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    hosts, spares = _hosts(data["hosts"]), _hosts(data.get("spares", ()))
    attempts = tuple(data.get("attempts", ()))
    record = JobRecord(**{**data, "hosts": hosts, "spares": spares, "attempts": attempts})
    if not isinstance(record.launched_at, int | float) or not isinstance(record.name, str):
        raise TypeError("bad name or launch time")
    return record


def _hosts(items: Any) -> tuple[Host, ...]:
    return tuple(Host(**{**h, "gpus": tuple(h["gpus"]) if h.get("gpus") is not None else None}) for h in items)
