"""Running a command and measuring it; seeing what runs inside each host.

Every timed command runs in its own process session, so that a timeout kills it and
everything it started. Resource usage comes from ``wait4``: the command's own CPU time
plus that of every descendant it waited for (xargs's and pdsh's ssh processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """One finished command and what it cost on the launching machine."""

    argv: tuple[str, ...]
    returncode: int
    wall_s: float
    cpu_s: float
    """User plus system seconds of the command and the descendants it reaped."""
    max_rss_mb: float
    """Peak resident memory of the largest of them."""
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def problem(self) -> str:
        """One line saying how the command failed, for the report."""
        last = (self.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"{self.argv[0]} exited with {self.returncode}: {last[:200]}"


def run_timed(argv: Sequence[str], env: Mapping[str, str], timeout: float = 300.0) -> Run:
    """Run ``argv`` from the repository root; wall time, CPU and peak RSS from ``wait4``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        # Not proc.wait(): it would reap the child and lose its rusage.
        timer = threading.Timer(timeout, _kill_group, args=(proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: what we started must not outlive us
            _kill_group(proc.pid)
            os.wait4(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(
            argv=tuple(argv),
            returncode=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            max_rss_mb=usage.ru_maxrss / 1024,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- hosts


@dataclass(frozen=True)
class Proc:
    pid: int
    """As seen from the launching machine (the root PID namespace)."""
    command: str


def census(namespaces: Mapping[str, str]) -> dict[str, list[Proc]]:
    """Live processes per host, in one pass over /proc; zombies count as gone.

    ``namespaces`` maps a PID namespace (``readlink /proc/PID/ns/pid``) to a host name.
    One pass for all hosts instead of ``TestHost.processes()`` per host: polled every
    50 ms at 32 hosts, the latter would eat a good part of a core of this 2-core machine.
    """
    found: dict[str, list[Proc]] = {host: [] for host in namespaces.values()}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            host = namespaces.get(os.readlink(f"/proc/{entry.name}/ns/pid"))
            if host is None or _is_zombie(entry.name):
                continue
            found[host].append(Proc(int(entry.name), _command_line(entry.name)))
        except OSError:  # it exited while we looked
            continue
    return found


def _is_zombie(pid: str) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "Z"


def _command_line(pid: str) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")
    if not raw:
        return "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
    return raw.replace(b"\0", b" ").decode(errors="replace")


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system seconds of ``pid``, with those of the children it reaped if ``children``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])  # utime stime cutime cstime
    return ticks / _CLOCK_TICKS


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def is_job_process(proc: Proc, init_pid: int) -> bool:
    """Not the host's own: its init (sshd), SSH sessions, or the tmux server.

    The tmux server is shared by every session on the host; its command line is the
    ``new-session`` that started it. It exits by itself with its last session.
    """
    if proc.pid == init_pid or proc.command.startswith("sshd:"):
        return False
    return not proc.command.split(" ", 1)[0].endswith("tmux")


def is_shell(proc: Proc) -> bool:
    """A shell: a login shell running ~/.bashrc, or a tmux pane's ``sh -c`` before its exec."""
    return os.path.basename(proc.command.split(" ", 1)[0]).lstrip("-") in ("bash", "sh", "dash")


def signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
