"""The part of launcher that runs ON each node: ``python -m launcher.node serve``.

The launching machine starts one agent per host over SSH (or as a local process for
``localhost``) and speaks to it in JSON lines: one request per line on stdin, one
answer per line on stdout. Everything that acts on the node itself lives here: tmux
sessions (libtmux), the job's processes (psutil), the per-node run directory with the
job's output and exit status.

The job's tmux session runs ``python -m launcher.supervisor RUN_DIR`` (supervisor.py),
which writes the files read here: ``output.log`` (every line, labelled with its global
rank), ``started.json``, ``exit.json`` and ``ranks.json``.

This module is imported on every node for every request, so it keeps its imports to
the standard library; psutil and libtmux are imported where they are needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from launcher import __version__
from launcher.paths import run_dir, runs_dir

JOB_MARKER = "LAUNCHER_JOB"
"""Environment variable set to the job name in every process of a job.

Children inherit it across double forks and ``setsid``, so ``kill`` finds processes that
left the tmux session's process tree; matching it exactly never touches another job.
"""

RANK_PREFIX_TEMPLATE = "\x1e${rank}\x1f"
"""torchrun's ``TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE``: each worker line arrives as
``RS <global rank> US <text>``. Control characters cannot be confused with output."""

RANK_PREFIX = re.compile(rb"\x1e(\d+)\x1f")
_SESSION_PREFIX = "launcher-"
_FOLLOW_POLL_S = 0.05
_WAIT_POLL_S = 0.25
_SUPERVISOR_START_S = 60.0
_MAX_BATCH_BYTES = 256 * 1024


class NodeError(Exception):
    """A request the node cannot carry out; its message goes back to the launcher."""


class HungUp(Exception):
    """The launcher closed the connection while a request was waiting: nobody to answer."""


Idle = Callable[[float], None]
"""Waits up to the given seconds between polls; raises HungUp once the launcher is gone."""


def session_name(job: str) -> str:
    return _SESSION_PREFIX + job


def this_run_dir(job: str) -> Path:
    return run_dir(job, socket.gethostname())


# ---------------------------------------------------------------------------- requests


def hello() -> dict[str, Any]:
    """Who and where this node is: the agent's first line, sent before any request.

    ``address`` is the address the launching machine reached us at (from sshd's
    ``SSH_CONNECTION``): the one the other nodes should use for the rendezvous, even
    when the hosts file names this node by an ssh-config alias.
    """
    ssh_connection = os.environ.get("SSH_CONNECTION", "").split()
    return {
        "version": __version__,
        "hostname": socket.gethostname(),
        "address": ssh_connection[2] if len(ssh_connection) == 4 else None,
        "python": sys.executable,
        "pid": os.getpid(),
    }


def prepare(job: str, cwd: str, want_port: bool, replace: bool = False, script: str | None = None) -> dict[str, Any]:
    """Check that the job can start here; pick a free rendezvous port if asked.

    ``script``, relative to ``cwd``, must exist (a file not synced to every node is the
    usual cause). A job of the same name still running here is refused, or killed when
    ``replace``.
    """
    if not os.path.isdir(cwd):
        raise NodeError(f"working directory {cwd} does not exist")
    if script is not None and not os.path.isfile(os.path.join(cwd, script)):
        raise NodeError(f"script {script} not found in {cwd}")
    tmux = _tmux_server()
    if tmux is None:
        raise NodeError("tmux is not installed (install it, e.g. apt-get install tmux)")
    if tmux.has_session(session_name(job)) or _read_status(job)["state"] == "running":
        if not replace:
            raise NodeError(f"job {job} is already running here (pass --force to replace it)")
        if kill(job, grace=10.0)["left"]:
            raise NodeError(f"job {job} is already running here and could not be killed")
    answer: dict[str, Any] = {"run_dir": str(this_run_dir(job))}
    if want_port:
        answer["port"] = free_port()
        answer["watch_port"] = free_port()
    return answer


def free_port() -> int:
    """A TCP port free on every address of this node right now."""
    with socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def start(
    job: str, argv: list[str], env: dict[str, str], cwd: str, teardown: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Start the job's tmux session running the supervisor, and wait until it runs."""
    tmux = _tmux_server()
    if tmux is None:
        raise NodeError("tmux is not installed")
    if tmux.has_session(session_name(job)):
        raise NodeError(f"job {job} is already running here")
    directory = this_run_dir(job)
    _clear_run_dir(directory)
    directory.mkdir(parents=True)
    job_env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    job_env.update(env)
    job_env[JOB_MARKER] = job
    write_json(directory / "spec.json", {"job": job, "argv": argv, "env": job_env, "cwd": cwd, "teardown": teardown})
    # Given as separate arguments, tmux runs the supervisor directly. As one string it
    # would go through `bash -c`, which reads ~/.bashrc (the server inherited SSH_CLIENT
    # from this agent): measured at ~0.08 s of CPU per host, for nothing.
    created = tmux.cmd(
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
        sys.executable,
        "-P",
        "-m",
        "launcher.supervisor",
        str(directory),
    )
    if created.returncode != 0:  # "duplicate session: ..." when the job started here meanwhile
        raise NodeError(f"tmux new-session failed: {' '.join(created.stderr) or created.returncode}")
    # Generous: on a busy node (32 torch imports sharing two cores, measured) the
    # supervisor's own start took longer than 15 s.
    deadline = time.monotonic() + _SUPERVISOR_START_S
    next_session_check = time.monotonic() + 0.5
    while not (directory / "started.json").exists():
        ended = read_json(directory / "exit.json")
        if ended is not None:  # the command could not start (written before started.json otherwise)
            raise NodeError(ended.get("error") or f"the job's command could not start (see {directory})")
        now = time.monotonic()
        if now > deadline:
            raise NodeError(f"the job's supervisor did not start within {_SUPERVISOR_START_S:g} s (see {directory})")
        # Asking tmux forks a client (~1.6 ms of CPU): now and then, not every poll.
        if now > next_session_check:
            if not tmux.has_session(session_name(job)) and not (directory / "started.json").exists():
                raise NodeError(f"the job's tmux session ended before its supervisor started (see {directory})")
            next_session_check = now + 0.5
        time.sleep(0.01)
    return {"session": session_name(job), "run_dir": str(directory)}


def status(job: str) -> dict[str, Any]:
    return _status_in_depth(job)


def kill(job: str, grace: float) -> dict[str, Any]:
    """End every process of the job here: SIGTERM, ``grace`` seconds, SIGKILL, verify."""
    directory = this_run_dir(job)
    before = _read_status(job)["state"]
    procs = job_processes(job)
    if procs and directory.exists() and not (directory / "exit.json").exists():
        (directory / "killed").touch()
    for proc in procs:
        send_signal(proc, signal.SIGTERM)
    alive = _wait_gone(procs, grace)
    forced: set[int] = set()
    # Processes may fork while we wait; sweep until a round finds nothing new.
    for _ in range(5):
        survivors = alive + [p for p in job_processes(job) if p not in alive]
        if not survivors:
            break
        for proc in survivors:
            send_signal(proc, signal.SIGKILL)
            forced.add(proc.pid)
        alive = _wait_gone(survivors, 2.0)
    tmux = _tmux_server()
    if tmux is not None and tmux.has_session(session_name(job)):
        tmux.kill_session(session_name(job))
    left = [[p.pid, _cmdline(p)] for p in job_processes(job)]
    gpu = _gpu_holders({p.pid for p in procs} | forced)
    return {"found": len(procs), "forced": len(forced), "left": left, "gpu_holders": gpu, "state_before": before}


def _gpu_holders(pids: set[int]) -> list[int]:
    """Which of ``pids`` nvidia-smi still lists as holding GPU memory (none without nvidia-smi)."""
    import shutil

    if not pids or shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"]
    try:
        listed = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted(pids & {int(word) for word in listed.split() if word.isdigit()})


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Those of ``procs`` still alive after at most ``timeout`` seconds.

    A zombie counts as gone: it holds no memory, GPU or port, and its parent may not
    reap it before the end of the kill (psutil's ``wait_procs`` would wait for that).
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def kill_all(grace: float) -> dict[str, Any]:
    """Kill every job of launcher running here: those with a live supervisor or session."""
    mine = runs_dir().glob(f"*/{socket.gethostname()}")
    names = {p.parent.name for p in mine if _read_status(p.parent.name)["state"] == "running"}
    tmux = _tmux_server()
    if tmux is not None:
        names |= {s.name[len(_SESSION_PREFIX) :] for s in tmux.sessions if (s.name or "").startswith(_SESSION_PREFIX)}
    results = {name: kill(name, grace) for name in sorted(names)}
    return {"jobs": results}


def job_processes(job: str) -> list[Any]:
    """Every live process of this user whose environment carries the job's marker."""
    import psutil

    me = os.getpid()
    uid = os.getuid()
    found = []
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(JOB_MARKER) == job:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def read_logs(job: str, offset: int, ranks: list[int] | None = None, stderr_only: bool = False) -> dict[str, Any]:
    """Complete log records from ``offset`` on, at most one batch's worth, those that
    pass the filters (an empty list with a new offset means: read on)."""
    path = this_run_dir(job) / "output.log"
    records, new_offset = _read_records(path, offset)
    keep = _record_filter(ranks, stderr_only)
    return {"records": [r for r in records if keep(r)], "offset": new_offset}


def tail_logs(job: str, count: int, ranks: list[int] | None, stderr_only: bool, emit: Any) -> dict[str, Any]:
    """The last ``count`` records of each rank (and of the node's own lines) that pass
    the filters, oldest first, sent in batches through ``emit``.

    The log is read backwards and only as far as needed: it stops once every rank known
    here has ``count`` lines (the node's own lines count as a rank unless ``ranks`` is
    given). Only the records kept cross the network. The answer's ``offset`` is where
    a follow goes on from.
    """
    directory = this_run_dir(job)
    keep = _record_filter(ranks, stderr_only)
    known = set(read_json(directory / "ranks.json") or [])
    expected: set[int | None] = (known & set(ranks)) if ranks else {*known, None}
    try:
        with open(directory / "output.log", "rb") as log:
            end = _end_of_complete_records(log)
            kept = _last_records(log, end, count, keep, expected)
    except FileNotFoundError:
        return {"offset": 0}
    chosen = sorted((item for group in kept.values() for item in group), key=lambda item: item[0])
    batch: list[list[Any]] = []
    size = 0
    for _, record in chosen:
        batch.append(record)
        size += len(record[3]) + 32
        if size >= _MAX_BATCH_BYTES:
            emit({"records": batch})
            batch, size = [], 0
    if batch:
        emit({"records": batch})
    return {"offset": end}


def _last_records(
    log: IO[bytes], end: int, count: int, keep: Callable[[list[Any]], bool], expected: set[int | None]
) -> dict[int | None, list[tuple[int, list[Any]]]]:
    """``(offset, record)`` of the last ``count`` kept records of each rank before ``end``."""
    kept: dict[int | None, list[tuple[int, list[Any]]]] = {}
    for offset, line in _records_backwards(log, end) if count else ():
        record = parse_record(line)
        if not keep(record):
            continue
        group = kept.setdefault(record[1], [])
        if len(group) < count:
            group.append((offset, record))
            expected.add(record[1])
        if all(len(kept.get(g, ())) >= count for g in expected):
            break
    return kept


def _records_backwards(log: IO[bytes], end: int, block: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """``(offset, record)`` for each record of a log that ends by ``end``, the last one first
    (``end`` is just after a newline)."""
    position = end
    pending = b""  # the start of the newest record not yet given, with its newline
    while position > 0:
        start = max(position - block, 0)
        log.seek(start)
        pieces = (log.read(position - start) + pending).split(b"\n")
        pieces.pop()  # the text ends with a newline: nothing after it
        pending = pieces.pop(0) + b"\n" if start > 0 else b""  # it may begin before `start`
        offset = start + len(pending)
        offsets = []
        for piece in pieces:
            offsets.append(offset)
            offset += len(piece) + 1
        yield from zip(reversed(offsets), reversed(pieces), strict=True)
        position = start


def _end_of_complete_records(fh: IO[bytes], block: int = 1 << 20) -> int:
    """The offset after the log's last newline: a record after it is still being written."""
    position = fh.seek(0, os.SEEK_END)
    while position > 0:
        start = max(position - block, 0)
        fh.seek(start)
        newline = fh.read(position - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _record_filter(ranks: list[int] | None, stderr_only: bool) -> Callable[[list[Any]], bool]:
    """Whether a record ``[time, rank, stream, text]`` passes ``logs --rank/--stderr``."""
    wanted = set(ranks or ())
    return lambda record: (not wanted or record[1] in wanted) and (not stderr_only or record[2] == "e")


def follow_logs(
    job: str,
    offset: int,
    emit: Any,
    ranks: list[int] | None = None,
    stderr_only: bool = False,
    idle: Idle = time.sleep,
) -> dict[str, Any]:
    """Send batches of new records that pass the filters through ``emit`` until the job
    has ended here; each batch carries the offset to resume from."""
    path = this_run_dir(job) / "output.log"
    keep = _record_filter(ranks, stderr_only)
    while True:
        ended = _read_status(job)["state"] != "running"
        records, new_offset = _read_records(path, offset)
        if new_offset != offset:
            offset = new_offset
            kept = [r for r in records if keep(r)]
            if kept:
                emit({"records": kept, "offset": offset})
            continue
        if ended:
            return {"offset": offset, "ended": True}
        idle(_FOLLOW_POLL_S)


def wait_ended(job: str, idle: Idle = time.sleep) -> dict[str, Any]:
    """Answer once the job no longer runs here (for ``launch --wait``: one quiet
    connection per host instead of a new login every poll)."""
    while (state := _read_status(job)["state"]) == "running":
        idle(_WAIT_POLL_S)
    return {"state": state}


# ---------------------------------------------------------------------------- status


def _read_status(job: str) -> dict[str, Any]:
    directory = this_run_dir(job)
    ended = read_json(directory / "exit.json")
    started = read_json(directory / "started.json")
    killed = (directory / "killed").exists()
    alive = started is not None and _process_alive(started["pid"], started["create_time"])
    exit_code = ended["exit_code"] if ended else None
    if killed:
        state = "killed"
    elif ended is not None:
        state = "succeeded" if exit_code == 0 else "failed"
    elif alive:
        state = "running"
    elif started is not None:
        state = "failed"  # the supervisor vanished without a word: the node rebooted, or it was SIGKILLed
    else:
        state = "unknown"
    return {
        "state": state,
        "exit_code": exit_code,
        "signal": ended.get("signal") if ended else None,
        "stopped_by": ended.get("stopped_by") if ended else None,
        "started_at": started["time"] if started else None,
        "ended_at": ended["time"] if ended else None,
        "hostname": socket.gethostname(),
    }


def _status_in_depth(job: str) -> dict[str, Any]:
    """Status plus what the log tells: the ranks seen here and, after a failure, its cause."""
    from launcher import failures

    answer = _read_status(job)
    directory = this_run_dir(job)
    records = _tail_records(directory / "output.log")
    rank_failures, _ = failures.rank_failures(records)
    seen = (
        {r[1] for r in records if r[1] is not None}
        | set(rank_failures)
        | set(read_json(directory / "ranks.json") or [])
    )
    answer["ranks"] = sorted(seen)
    answer["rank_failures"] = {str(rank): failure for rank, failure in rank_failures.items()}
    answer["restarts"] = max(len(list((directory / "torchrun").glob("*/attempt_*"))) - 1, 0)
    if answer["state"] == "failed":
        answer["failure"] = failures.root_cause(records, answer["exit_code"])
    return answer


def _tail_records(path: Path, max_bytes: int = 4 << 20) -> list[list[Any]]:
    """The records of the last ``max_bytes`` of a log: a summary and a traceback fit easily."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(size - max_bytes, 0))
            data = fh.read()
    except FileNotFoundError:
        return []
    if size > max_bytes:
        data = data[data.find(b"\n") + 1 :]  # drop the partial first record
    return [parse_record(line) for line in data.split(b"\n")[:-1]]


def _process_alive(pid: int, create_time: float) -> bool:
    import psutil

    try:
        started: float = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    return abs(started - create_time) < 0.01


# ---------------------------------------------------------------------------- logs


def _read_records(path: Path, offset: int) -> tuple[list[list[Any]], int]:
    """Parse whole records from ``offset``; a trailing partial record waits for its end."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(_MAX_BATCH_BYTES)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    # Split on newlines only: a carriage return (a progress bar) stays inside its record.
    records = [parse_record(line) for line in data[:end].split(b"\n")[:-1]]
    return records, offset + end


def parse_record(line: bytes) -> list[Any]:
    """``b"<time> <rank> <o|e> <text>"`` -> ``[time, rank or None, stream, text]``."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 4:
        return [0.0, None, "o", line.decode("utf-8", "replace")]
    stamp, rank, kind, text = parts
    return [float(stamp), None if rank == b"-" else int(rank), kind.decode(), text.decode("utf-8", "replace")]


# ---------------------------------------------------------------------------- helpers


def _tmux_server() -> Any:
    import shutil

    if shutil.which("tmux") is None:
        return None
    import libtmux

    return libtmux.Server()


def _clear_run_dir(directory: Path) -> None:
    import shutil

    if directory.exists():
        shutil.rmtree(directory)


def send_signal(proc: Any, signum: int) -> None:
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc.send_signal(signum)


def _cmdline(proc: Any) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Write atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- serve


_REQUESTS: dict[str, Any] = {
    "prepare": lambda r: prepare(
        r["job"], r["cwd"], r.get("want_port", False), r.get("replace", False), r.get("script")
    ),
    "start": lambda r: start(r["job"], r["argv"], r["env"], r["cwd"], r.get("teardown")),
    "status": lambda r: status(r["job"]),
    "kill": lambda r: kill(r["job"], float(r.get("grace", 10.0))),
    "kill_all": lambda r: kill_all(float(r.get("grace", 10.0))),
    "logs": lambda r: read_logs(r["job"], int(r.get("offset", 0)), r.get("ranks"), bool(r.get("stderr_only"))),
}


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """Answer JSON requests, one per line, until stdin closes."""

    def emit(message: dict[str, Any]) -> None:
        stdout.write(json.dumps(message) + "\n")
        stdout.flush()

    idle = _idle_until_hang_up(stdin)

    emit({"ok": True, **hello()})  # unasked: the launcher learns who we are without a round trip
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "follow":
                answer = follow_logs(
                    request["job"],
                    int(request.get("offset", 0)),
                    emit,
                    request.get("ranks"),
                    bool(request.get("stderr_only")),
                    idle,
                )
            elif op == "wait":
                answer = wait_ended(request["job"], idle)
            elif op == "tail":
                answer = tail_logs(
                    request["job"], int(request["count"]), request.get("ranks"), bool(request.get("stderr_only")), emit
                )
            elif op in _REQUESTS:
                answer = _REQUESTS[op](request)
            else:
                raise NodeError(f"unknown request {op!r}")
            emit({"ok": True, **answer})
        except NodeError as exc:
            emit({"ok": False, "error": str(exc)})
        except (BrokenPipeError, HungUp):
            return
        except Exception as exc:  # noqa: BLE001 - the launcher shows it, naming this host
            emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _idle_until_hang_up(stdin: IO[str]) -> Idle:
    """An ``Idle`` that watches ``stdin`` for its end (Ctrl-C, a dropped connection).
    Without it, an agent would wait for the job's end (hours) with nobody left to answer."""
    import fcntl
    import termios

    try:
        fd = stdin.fileno()
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both
        return time.sleep

    def idle(seconds: float) -> None:
        readable, _, _ = select.select([fd], [], [], seconds)
        if not readable:
            return
        pending = bytearray(4)
        try:
            fcntl.ioctl(fd, termios.FIONREAD, pending)
        except OSError:  # not a pipe or socket: no way to tell, so keep waiting
            time.sleep(seconds)
            return
        if int.from_bytes(pending, sys.byteorder) == 0:
            raise HungUp  # readable with nothing to read: the end of the stream
        time.sleep(seconds)  # a next request waits its turn (select would return at once)

    return idle


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        # A dropped connection must end a follow quietly, not with a traceback.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        serve(sys.stdin, sys.stdout)
        return 0
    print("usage: python -m launcher.node serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
