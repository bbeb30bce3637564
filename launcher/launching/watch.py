"""Starting the watcher of a job launched with ``--restarts``: where it runs, and why there.

It runs on this machine (the launching one), as ``python -m launcher.launching.controller
NAME``, in a session of its own (``setsid``): closing the shell, logging out or a hangup
leaves it running, as a tmux session would, without asking for tmux here. This machine
is where the job's record, the spares, the SSH keys and known_hosts are; a host of the
job could die with the job, and running it there would mean installing the launching
side on the nodes. If this machine goes away, the current attempt runs on (its nodes
need nothing from here), and ``status`` says recovery is no longer watched.

Its inputs: the launch's spec, pickled next to the job's record (0600 in a 0700
directory: the spec holds the job's variables, tokens included), removed when it ends.
Its output: ``<name>.watcher.log`` there. It registers itself in the record (pid and
start time, ``job/watcher.py``); ``start_watcher`` returns once it has.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from launcher.errors import LauncherError
from launcher.job.records import JobRecord, load_record, make_records_dir, update_record
from launcher.launching.spec import LaunchSpec
from launcher.protocol import private

REGISTER_WITHIN_S = 30.0
"""A watcher that has not registered by then (it imports asyncssh first) failed to start."""


def spec_path(name: str) -> Path:
    return make_records_dir() / f"{name}.launch.pickle"


def log_path(name: str) -> Path:
    return make_records_dir() / f"{name}.watcher.log"


def start_watcher(record: JobRecord, spec: LaunchSpec) -> JobRecord:
    """Start the job's watcher, detached; the record once it registered.

    LauncherError, with the end of its log, if it ends or stays silent before registering;
    the job runs on either way (without recovery)."""
    private.write_file(spec_path(record.name), pickle.dumps(replace(spec, name=record.name)))
    log = log_path(record.name)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "launcher.launching.controller", record.name],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(out)
    deadline = time.monotonic() + REGISTER_WITHIN_S
    while time.monotonic() < deadline:
        current = load_record(record.name)
        if current.watcher is not None and current.watcher.get("pid") == process.pid:
            return current
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    process.wait()
    tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
    raise LauncherError(
        f"the watcher of {record.name} did not start, so it will not be restarted"
        f" ({' / '.join(tail) or 'no output'}; log: {log})"
    )


def load_spec(name: str) -> LaunchSpec:
    with open(spec_path(name), "rb") as f:
        spec = pickle.load(f)  # our own file, 0600 in our 0700 directory
    if not isinstance(spec, LaunchSpec):
        raise LauncherError(f"{spec_path(name)} does not hold a launch")
    return spec


def register(name: str) -> JobRecord:
    """The watcher, in its own process: note its pid and start time in the record."""
    import psutil

    me = psutil.Process()
    return update_record(
        name, watcher={"pid": me.pid, "since": me.create_time(), "log": str(log_path(name))}, recovery="watching"
    )
