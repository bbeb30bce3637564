"""The node's tmux server: each job is one detached session.

Every question goes to the tmux client, an argument list each (never a shell string): it
costs ~2 ms of node CPU where importing libtmux cost ~40 ms, and it needs nothing installed
into the job's Python, which may be as old as 3.9 (libtmux requires 3.10).

``LAUNCHER_TMUX_SOCKET`` (a socket path) points the agent at a tmux server of its own:
the tests use it, as libtmux's own fixtures do, so that they never touch the user's.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from launcher.protocol.base import JOB_MARKER, SESSION_PREFIX, session_name

SOCKET_VARIABLE = "LAUNCHER_TMUX_SOCKET"


class TmuxMissing(Exception):
    """tmux is not on this node's PATH."""


def check_installed() -> None:
    if shutil.which("tmux") is None:
        raise TmuxMissing


def _client(*args: str) -> subprocess.CompletedProcess[bytes]:
    check_installed()
    socket_path = os.environ.get(SOCKET_VARIABLE)
    argv = ["tmux", *(["-S", socket_path] if socket_path else []), *args]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False)


def has_session(job: str) -> bool:
    """Whether the job's session exists (``=`` asks for that exact name, not a prefix)."""
    return _client("has-session", "-t", f"={session_name(job)}").returncode == 0


def new_session(job: str, cwd: str, argv: list[str]) -> str | None:
    """Start ``argv`` in a detached session for the job; tmux's complaint, or None if it started.

    Given as separate arguments, tmux runs the command directly. As one string it would
    go through ``bash -c``, which reads ~/.bashrc: ~0.08 s of CPU per host, for nothing.
    """
    created = _client(
        "new-session",
        "-d",
        "-s",
        session_name(job),
        "-c",
        cwd,
        "-x",
        "220",
        "-y",
        "50",
        "-e",
        f"{JOB_MARKER}={job}",
        *argv,
    )
    if created.returncode == 0:
        return None
    return " ".join(created.stderr.decode(errors="replace").split()) or f"exit status {created.returncode}"


def kill_session(job: str) -> None:
    """End the job's session if there is one (no server running: nothing to end)."""
    _client("kill-session", "-t", f"={session_name(job)}")


def job_sessions() -> set[str]:
    """The jobs that have a session on this node's server."""
    try:
        listed = _client("list-sessions", "-F", "#{session_name}")
    except TmuxMissing:
        return set()
    names = listed.stdout.decode(errors="replace").splitlines() if listed.returncode == 0 else []  # no server
    return {name[len(SESSION_PREFIX) :] for name in names if name.startswith(SESSION_PREFIX)}
