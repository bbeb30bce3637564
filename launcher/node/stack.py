"""``launcher stack`` here: every rank's Python stack at once, saved in the run directory.

A rank is the topmost process of the job (``LAUNCHER_JOB``) with a ``RANK`` in its
environment (its data loader's workers inherit the variable; their parent is the rank).
Two ways to take a stack, both without stopping the rank for more than a moment:

- ``py-spy dump`` reads the process's memory (ptrace): a pause of milliseconds;
- the fallback where ptrace is refused (no ``CAP_SYS_PTRACE``, Yama, a container): the job's
  startup hook (``launcher/startup/sitecustomize.py``) registered ``faulthandler`` on a
  signal; the signal makes the rank write its stacks to a file of the run directory.

Full stacks go to ``<run dir>/stacks/<time>/rank-<R>.txt`` (0600 in 0700 directories).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from launcher.node import nccl_dump, processes, stack_frames, status
from launcher.node.rundir import RunDir
from launcher.protocol import private
from launcher.protocol.stack import (
    FAULTHANDLER_DIR,
    STACK_METHOD_VARIABLE,
    STACK_SIGNAL_OFFSET,
    RankStack,
    StackReport,
    TakeStacks,
)

_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class NoStack(Exception):
    """Why one rank's stack could not be taken (its message is shown)."""


def take_stacks(request: TakeStacks) -> StackReport:
    """The stacks of the job's ranks here (those of ``request.ranks`` only, if given)."""
    run = RunDir.of(request.job)
    hostname = socket.gethostname()
    if not run.exists():
        return StackReport(hostname=hostname, ranks=[], error="the job never ran here")
    found = rank_processes(request.job)
    state = status.node_state(run)
    if not found and state != "running":
        return StackReport(hostname=hostname, ranks=[], error=f"the job is not running here ({state})")
    wanted = set(found) | set(run.read_ranks())
    if request.ranks is not None:
        wanted &= set(request.ranks)  # a rank of another host is that host's to answer
    if not wanted:
        return StackReport(hostname=hostname, ranks=[], error=None if request.ranks else "no rank of the job here")
    label = request.label if request.label and _PLAIN.fullmatch(request.label) else None
    directory = private.make_dirs(run.path, "stacks", label or time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    method = os.environ.get(STACK_METHOD_VARIABLE) or request.method

    def one(rank: int) -> RankStack:
        proc = found.get(rank)
        if proc is None:
            return RankStack(rank=rank, error="no process of this rank runs here (it ended)")
        try:
            how, threads = _take(run, proc.pid, method, request.native, request.timeout)
        except NoStack as exc:
            return RankStack(rank=rank, pid=proc.pid, error=str(exc))
        text = stack_frames.render_threads(rank, proc.pid, how, threads)
        path = directory / f"rank-{rank}.txt"
        private.write_file(path, text.encode("utf-8"))
        user, library = stack_frames.place(stack_frames.main_thread(threads))
        return RankStack(rank, proc.pid, how, user, library, str(path), text)

    with ThreadPoolExecutor(max_workers=min(32, len(wanted))) as pool:
        stacks = list(pool.map(one, sorted(wanted)))
    dumps, problems = (
        nccl_dump.dump_flight_recorders(run, sorted(wanted), request.timeout) if request.nccl else ({}, [])
    )
    return StackReport(hostname, stacks, str(directory), None, dumps, problems)


def rank_processes(job: str) -> dict[int, Any]:
    """Each rank's process, by global rank: of the job's processes with ``RANK`` set, the one
    whose parent does not carry that rank too."""
    import psutil

    by_pid: dict[int, tuple[int, Any]] = {}
    for proc in processes.job_processes(job):
        try:
            rank = proc.environ().get("RANK", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if rank.isdigit():
            by_pid[proc.pid] = (int(rank), proc)
    ranks: dict[int, Any] = {}
    for rank, proc in by_pid.values():
        parent = by_pid.get(proc.ppid())
        if parent is None or parent[0] != rank:
            ranks.setdefault(rank, proc)
    return ranks


def _take(run: RunDir, pid: int, method: str, native: bool, timeout: float) -> tuple[str, list[Any]]:
    """``(method used, threads)``; py-spy first unless the fallback is asked for."""
    if method == "faulthandler":
        return "faulthandler", _by_signal(run, pid, timeout)
    try:
        return "py-spy", _by_py_spy(pid, native, timeout)
    except NoStack as refused:
        if method == "py-spy":
            raise
        try:
            return "faulthandler", _by_signal(run, pid, timeout)
        except NoStack as exc:
            raise NoStack(f"{refused}; fallback: {exc}") from None


def py_spy_path() -> str | None:
    """py-spy beside this Python (a venv's bin/, not always on PATH), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("py-spy")


def _by_py_spy(pid: int, native: bool, timeout: float) -> list[Any]:
    binary = py_spy_path()
    if binary is None:
        raise NoStack("py-spy is not installed here (pip install py-spy)")
    argv = [binary, "dump", "--pid", str(pid), "--json", *(["--native"] if native else [])]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NoStack(f"py-spy took over {timeout:g}s") from None
    except OSError as exc:
        raise NoStack(f"cannot run py-spy: {exc.strerror or exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise NoStack(f"py-spy refused: {last}")
    try:
        return stack_frames.threads_of_py_spy(json.loads(done.stdout))
    except ValueError:
        raise NoStack("py-spy printed no JSON") from None


def stack_signal() -> int:
    return int(signal.SIGRTMIN) + STACK_SIGNAL_OFFSET


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for ``signum`` (``SigCgt`` in /proc): sending it
    to a process without one would kill it."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            caught = next((line.split()[1] for line in fh if line.startswith("SigCgt:")), "0")
    except (OSError, IndexError):
        return False
    return bool(int(caught, 16) >> (signum - 1) & 1)


def _by_signal(run: RunDir, pid: int, timeout: float) -> list[Any]:
    """Signal the rank's faulthandler and read what it appended to its file."""
    path = run.path / FAULTHANDLER_DIR / f"{pid}.txt"
    signum = stack_signal()
    if not path.exists() or not _catches(pid, signum):
        raise NoStack("the in-process fallback is not armed in this rank (launched by an older launcher?)")
    before = path.stat().st_size
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise NoStack("the rank ended") from None
    except PermissionError:
        raise NoStack("not allowed to signal the rank") from None
    deadline = time.monotonic() + timeout
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = path.stat().st_size
        if now > before and now == size:
            break  # written, and no more since the last look: faulthandler is done
        size = now
    else:
        raise NoStack(f"the rank wrote no stack within {timeout:g}s")
    with open(path, "rb") as fh:
        fh.seek(before)
        text = fh.read().decode("utf-8", "replace")
    return stack_frames.threads_of_faulthandler(text)
