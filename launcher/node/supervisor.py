"""The job's supervisor on each node: forked from the agent that starts the job (``detach.py``),
or run by a SLURM task (``slurm_task.py``) or by hand (``python -m launcher.node.supervisor RUN_DIR``).

It starts the job's command from the run directory's spec and writes every output line
to ``output.log``, labelled with its global rank (torchrun prefixes each worker line with
``protocol.RANK_PREFIX_TEMPLATE``). It records how the command ended. With the other
nodes' supervisors, it stops the job everywhere when the job fails anywhere (``teardown``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from launcher.node import hang, teardown, teardown_client
from launcher.node.logfile import RANK_PREFIX, OutputLog
from launcher.node.rundir import ExitRecord, JobSpec, RunDir, SupervisorStarted
from launcher.protocol.teardown import Teardown

_COMMIT_POLL_S = 0.5
"""How often a held supervisor looks at its agent and the deadline (a commit wakes it at once)."""
_RANKS_POLL_S = 0.5
_RANKS_STEADY_S = 30.0
_RANKS_STEADY_POLL_S = 5.0
"""The workers' ranks: polled every 0.5 s, then every 5 s once none was new for 30 s
(an elastic restart's new workers are still found, a few seconds later)."""
_STOP_GRACE_S = 15.0
"""After a teardown SIGTERM, how long torchrun gets to stop its workers before SIGKILL."""


def pump(stream: IO[bytes], kind: str, log: OutputLog, activity: hang.Activity | None = None) -> None:
    """Copy one of the command's streams into the log, a line at a time."""
    for raw in iter(stream.readline, b""):
        rank: int | None = None
        match = RANK_PREFIX.match(raw)
        if match:
            rank = int(match.group(1))
            raw = raw[match.end() :]
            if activity is not None:
                activity.line()
        # torchrun's tail writes a partial line with a prefix and its rest with another.
        log.write(rank, kind, RANK_PREFIX.sub(b"", raw))


def supervise(run: RunDir, notify: Callable[[], None] = lambda: None) -> int:
    """Run the job's command, label and record its output, record how it ended.
    ``notify`` is called once it holds the command and once the command runs (the agent
    that forked it waits for those, ``detach.py``)."""
    import psutil

    spec = run.read_spec()
    if spec is None:
        print(f"launcher: no job spec in {run.path}", file=sys.stderr)
        return 2
    log = OutputLog.open(run.log_path)
    if spec.hold is not None:
        refused = _wait_for_commit(run, spec, spec.hold, notify)
        if refused is not None:
            log.note(refused)
            run.write_exit(ExitRecord(exit_code=1, time=time.time(), error=refused))
            return 1
        spec = run.read_spec() or spec  # the commit completed it: the rendezvous address
    try:
        proc = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        error = f"cannot start {spec.argv[0]}: {exc.strerror or exc}"
        log.note(error)
        run.write_exit(ExitRecord(exit_code=127, time=time.time(), error=error))
        return 127
    me = psutil.Process()
    run.write_started(SupervisorStarted(pid=me.pid, create_time=me.create_time(), child=proc.pid, time=time.time()))
    notify()

    for forwarded in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(forwarded, lambda signum, _frame: proc.send_signal(signum))
    activity = hang.Activity(run)
    pumps = [
        threading.Thread(target=pump, args=(s, k, log, activity), daemon=True)
        for s, k in ((proc.stdout, "o"), (proc.stderr, "e"))
    ]
    for thread in pumps:
        thread.start()

    ranks = _RankBook(run)
    threading.Thread(target=_record_ranks, args=(proc, ranks), daemon=True).start()
    stopper = _Stopper(proc, spec.job, log)
    watch = _start_watch(spec.teardown, stopper, log)
    hangs = _watch_hangs(run, spec, activity, log, stopper, watch)
    returncode = proc.wait()
    if hangs is not None:
        hangs.finish()
    for thread in pumps:
        # A daemonised grandchild may hold the pipes open forever: do not wait for it.
        thread.join(timeout=2)
    ranks.add(log.ranks_written)  # workers too quick for the poll, known by their output
    exit_code, signum = (128 - returncode, -returncode) if returncode < 0 else (returncode, None)
    # Recorded before the others hear of it: whoever asks then finds the cause here.
    ended = ExitRecord(
        exit_code=exit_code,
        signal=signum,
        time=time.time(),
        stopped_by=stopper.stopped_by,
        lost_node=stopper.lost_node,
        last_heard=stopper.last_heard,
    )
    run.write_exit(ended)
    if watch is not None:
        failed_here = returncode != 0 and stopper.stopped_by is None and not run.was_killed()
        if not failed_here:
            watch.finish()
        elif (first := watch.report_failure()) is not None:
            # Another node's failure reached node 0 first: this one followed from it.
            log.note(f"node {first} failed first: this node's failure followed it")
            run.write_exit(dataclasses.replace(ended, stopped_by=first))
    return 0


def _wait_for_commit(run: RunDir, spec: JobSpec, hold: float, notify: Callable[[], None]) -> str | None:
    """Hold the command until the launcher commits the start (every host started); why
    not, when it never does: the agent that started us ended first (the launcher died or
    was cut off: its SSH session closed), or ``spec.hold`` seconds passed (a machine that
    vanished without closing its connections)."""
    deadline = time.monotonic() + hold
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # the agent's "committed"
    run.mark_held(os.getpid())
    notify()
    try:
        while not run.is_committed():
            if _agent_gone(spec) and not run.is_committed():
                return "launch abandoned: the launcher went away before every host had started"
            if time.monotonic() > deadline:
                return f"launch abandoned: no commit from the launcher within {hold:g} s"
            signal.sigtimedwait({signal.SIGUSR1}, _COMMIT_POLL_S)
    finally:
        # Caught signals are reset at exec, blocked ones are not: unblock, for the command's sake.
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    return None


def _agent_gone(spec: JobSpec) -> bool:
    from launcher.node.status import process_alive

    if spec.agent_pid is None or spec.agent_create_time is None:
        return False
    return not process_alive(spec.agent_pid, spec.agent_create_time)


class _RankBook:
    """``ranks.json``: the global ranks seen on this node, only ever growing."""

    def __init__(self, run: RunDir) -> None:
        self._run = run
        self._lock = threading.Lock()
        self._seen: set[int] = set()

    def add(self, ranks: set[int]) -> bool:
        """Whether any of ``ranks`` is new."""
        with self._lock:
            if ranks <= self._seen:
                return False
            self._seen |= ranks
            self._run.write_ranks(sorted(self._seen))
            return True


def _record_ranks(proc: subprocess.Popen[bytes], ranks: _RankBook) -> None:
    """Add the global ranks of the workers running on this node to ``ranks``.

    Read from the workers' environment (torchrun sets RANK), so ranks that never print
    are known too. A worker that ends within one poll is missed here; the supervisor adds
    the ranks of the lines written once the command has ended. Polled often while the
    workers start, then seldom: listing a process's children reads all of ``/proc``, and a
    GPU node runs thousands of processes for days.
    """
    import psutil

    try:
        parent = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    changed_at = time.monotonic()
    while proc.poll() is None:
        found = set()
        for child in _children(parent):
            try:
                rank = child.environ().get("RANK")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if rank is not None and rank.isdigit():
                found.add(int(rank))
        now = time.monotonic()
        if ranks.add(found):
            changed_at = now
        time.sleep(_RANKS_POLL_S if now - changed_at < _RANKS_STEADY_S else _RANKS_STEADY_POLL_S)


def _children(parent: Any) -> list[Any]:
    import psutil

    try:
        return list(parent.children())
    except psutil.NoSuchProcess:
        return []


class _Stopper:
    """Stops the job on this node because another node failed: SIGTERM, then SIGKILL."""

    def __init__(self, proc: subprocess.Popen[bytes], job: str, log: OutputLog) -> None:
        self._proc = proc
        self._job = job
        self._log = log
        self.stopped_by: int | None = None
        self.lost_node: int | None = None
        self.last_heard: float | None = None

    def stop(self, failed_node: int) -> None:
        self._stop(failed_node, f"node {failed_node} failed: stopping this node too")

    def lost(self, node: int, last_heard: float) -> None:
        """Node ``node`` fell silent: no heartbeat since ``last_heard``."""
        if self.stopped_by is None and self._proc.poll() is None:
            self.lost_node, self.last_heard = node, last_heard
        since = time.strftime("%H:%M:%S", time.localtime(last_heard))
        self._stop(node, f"node {node} lost: no heartbeat since {since}: stopping this node too")

    def stop_hung(self) -> None:
        """The job is hung (``--hang-timeout``): stop it here as a failure, which the teardown
        carries to every node."""
        if self.stopped_by is None and self._proc.poll() is None:
            self._proc.terminate()
            threading.Thread(target=self._kill_after_grace, daemon=True).start()

    def _stop(self, node: int, why: str) -> None:
        if self.stopped_by is not None or self._proc.poll() is not None:
            return
        self.stopped_by = node
        self._log.note(why)
        self._proc.terminate()
        threading.Thread(target=self._kill_after_grace, daemon=True).start()

    def _kill_after_grace(self) -> None:
        try:
            self._proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            from launcher.node import processes  # only for a command that outlives its grace

            for proc in processes.job_processes(self._job):
                if proc.pid != os.getpid():
                    processes.send_signal(proc, signal.SIGKILL)


def _watch_hangs(
    run: RunDir, spec: JobSpec, activity: hang.Activity, log: OutputLog, stopper: _Stopper, watch: Any
) -> hang.HangWatch | None:
    """``--hang-timeout``: node 0 (or a node alone) decides; the others report and answer."""
    timeout, keep = hang.hang_settings(spec.env)
    if timeout is None:
        return None
    from launcher.node import stack  # only a job with --hang-timeout takes stacks

    hangs = hang.HangWatch(run, spec.job, timeout, keep, activity, log.note, stopper.stop_hung, stack.take_stacks)
    if isinstance(watch, teardown_client.WatchClient):
        watch.activity = activity.last
        watch.on_hang = hangs.on_hang
    else:
        hangs.watch(watch)
    return hangs


def _start_watch(config: Teardown | None, stopper: _Stopper, log: OutputLog) -> Any:
    """This node's teardown watcher, or None (noted) when it cannot run.

    A job without a secret runs unwatched rather than watched by an unauthenticated
    channel that anyone could stop it through; the launch always sends one.
    """
    if config is None:
        return None
    if not config.secret:
        log.note("teardown watcher off: the start named no secret to authenticate the other nodes with")
        return None
    if config.node == 0:
        try:
            return teardown.WatchServer(
                config.address,
                config.port,
                config.secret,
                stopper.stop,
                log.note,
                stopper.lost,
                config.timeout,
                config.nodes,
            )
        except OSError as exc:
            log.note(f"teardown watcher cannot listen on port {config.port}: {exc}")
            return None
    return teardown_client.WatchClient(
        config.address, config.port, config.node, config.secret, stopper.stop, log.note, stopper.lost, config.timeout
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m launcher.node.supervisor RUN_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(supervise(RunDir(Path(sys.argv[1]))))
