"""The job's supervisor as a fork of this agent, detached: no second Python to start.

The agent has imported most of what a supervisor needs; a fork costs a millisecond of CPU
where ``python -m launcher.node.supervisor`` in the tmux pane cost ~50 ms before its first
line (interpreter, site, imports), on every host of every launch. The fork leaves the agent
behind: a session of its own (``setsid``, then a second fork, so that nobody waits for it),
the SSH channel's descriptors replaced (sshd ends the session when the agent's close; a
supervisor holding them would keep it open), the ports the agent holds and every other
descriptor closed, its signals as a process that tmux starts has them (``_fresh_signals``).

Its output reaches the job's tmux session through a FIFO in the run directory, which the
pane's ``cat`` reads: the pane shows the job's labelled lines and ends with the supervisor,
as when it ran the supervisor itself. A session killed by hand (``tmux kill-session``)
takes the FIFO's reader with it, and the supervisor forwards SIGHUP to the command, as
tmux did to the supervisor.

A forked process's environment (``/proc/<pid>/environ``) is what the agent was started
with, without the job marker, so the supervisor records its pid and create time first
(``supervisor.json``), and ``processes.job_processes`` counts it with the marked ones. Its
command line is the agent's too: it writes its own over it, as ``setproctitle`` does, so
that ``ps`` tells it from an agent (``python -m launcher.node.supervisor RUN_DIR``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable

from launcher.node.rundir import ExitRecord, RunDir, SupervisorProcess

PANE_OPEN_S = 10.0
"""How long the supervisor waits for the pane's ``cat`` to open the FIFO; then it runs without."""


def make_pane(run: RunDir) -> str:
    """The FIFO the pane reads (0600, in the 0700 run directory); its path."""
    path = str(run.pane_path)
    os.mkfifo(path, 0o600)
    return path


def spawn(run: RunDir) -> int:
    """Fork the supervisor of ``run``; the read end of a pipe that gets a byte when the
    supervisor holds the command and when the command runs, and its end when it ends."""
    ready_read, ready_write = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # nothing of the agent's buffered output may reach the pane twice
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_read)
            os.setsid()
            if os.fork() == 0:
                os._exit(_supervise(run, ready_write))
        finally:
            os._exit(0)
    os.close(ready_write)
    os.waitpid(child, 0)
    return ready_read


def _supervise(run: RunDir, ready: int) -> int:
    """The detached supervisor's life: never returns into the agent's code."""
    try:
        ready = _leave_agent(run, ready)
        from launcher.node import supervisor

        _watch_pane(lambda: os.kill(os.getpid(), signal.SIGHUP))  # what tmux sent the pane's process
        return supervisor.supervise(run, notify=lambda: _tell(ready))
    except BaseException as exc:  # noqa: BLE001 - whatever it was, the agent (and status) tell it
        import traceback

        traceback.print_exc()
        if not run.has_ended():
            error = f"the job's supervisor failed: {type(exc).__name__}: {exc}"
            run.write_exit(ExitRecord(exit_code=1, time=time.time(), error=error))
        return 1


def _leave_agent(run: RunDir, ready: int) -> int:
    """Leave the agent's state behind; the ready pipe's descriptor, above 2."""
    import fcntl

    import psutil

    me = psutil.Process()
    run.write_supervisor(SupervisorProcess(pid=me.pid, create_time=me.create_time()))
    retitle(f"{sys.executable} -m launcher.node.supervisor {run.path}")
    _fresh_signals()
    network = sys.modules.get("launcher.node.network")
    if network is not None:
        network.release_all()  # through their sockets: a closed descriptor's number is reused
    if ready <= 2:  # an agent started with a standard stream closed: the pipe took its number
        ready = fcntl.fcntl(ready, fcntl.F_DUPFD, 3)
    devnull = os.open(os.devnull, os.O_RDWR)
    pane = _open_pane(run)
    if pane is None:  # tmux never started the pane's cat: a session left waiting would block the name
        from launcher.node import tmux

        tmux.kill_session(run.path.parent.name)
        pane = devnull
    os.dup2(devnull, 0)
    os.dup2(pane, 1)
    os.dup2(pane, 2)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != ready:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
                os.close(fd)
    spec = run.read_spec()
    if spec is not None and os.path.isdir(spec.cwd):
        os.chdir(spec.cwd)
    return ready


def _fresh_signals() -> None:
    """Signals as a process that tmux starts has them, and so the job's command: none
    blocked (the agent held some while it forked), none ignored (an agent started under
    ``nohup`` ignores SIGHUP, which ignored would pass on through exec to the command).
    SIGPIPE ignored, as Python starts (the agent's is the default)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in signal.valid_signals():
        if signum not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(signum) == signal.SIG_IGN:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _open_pane(run: RunDir) -> int | None:
    """The FIFO's write end, blocking, once the pane's ``cat`` has it open; None if it never does."""
    deadline = time.monotonic() + PANE_OPEN_S
    while True:
        try:
            fd = os.open(run.pane_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                return None
            time.sleep(0.005)  # tmux is still starting the pane
            continue
        os.set_blocking(fd, True)
        return fd


def _tell(ready: int) -> None:
    with contextlib.suppress(OSError):  # the agent is gone: nobody waits
        os.write(ready, b".")


def _watch_pane(gone: Callable[[], None]) -> None:
    """Call ``gone`` once the pane stops reading (its session was killed): a FIFO's write end
    polls as an error when it has no reader, at no cost before."""

    def watch() -> None:
        poller = select.poll()
        poller.register(1, 0)  # errors and hang-ups are always reported
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            if any(event & (select.POLLERR | select.POLLHUP) for _, event in events):
                gone()
                return

    if not stat.S_ISFIFO(os.fstat(1).st_mode):
        return
    # Started with every signal blocked, which it keeps: a signal for the process (the
    # commit's SIGUSR1, which the held supervisor waits for in its main thread) must never
    # be taken by this thread, where SIGUSR1's default would end the process.
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        threading.Thread(target=watch, daemon=True).start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def retitle(title: str) -> None:
    """Write ``title`` over this process's command line (``/proc/self/cmdline``, what ``ps``
    shows), cut to the length of the one it was started with. The argument area's last byte
    left non-zero tells the kernel to read the title up to its end, as for ``setproctitle``."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as stat_file:
            fields = stat_file.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if start <= 0 or size < 2:
        return  # not shown to us: nothing to write over
    text = title.encode("utf-8", "replace")[: size - 1] + b"\0"
    ctypes.memmove(start, text + b" " * (size - len(text)), size)
