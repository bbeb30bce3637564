"""Prepare and start a job on this node: checks first, then its tmux session and supervisor."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterator

from launcher.node import detach, network, preflight, processes, status, tmux
from launcher.node.errors import NodeError
from launcher.node.rundir import JobSpec, RunDir
from launcher.protocol.base import JOB_MARKER, RENDEZVOUS_ADDRESS, RUN_DIR_VARIABLE, session_name
from launcher.protocol.messages import Commit, Prepare, Prepared, Start, Started
from launcher.protocol.python_env import NODE_FALLBACK_VARIABLE

SUPERVISOR_START_S = 600.0
"""Only a backstop: the supervisor's pipe tells at once of its steps and of its end."""


def prepare(request: Prepare) -> Prepared:
    """Check that the job can start here; pick free ports if asked.

    The script, relative to ``cwd``, must exist (a file not synced to every node is the
    usual cause). A job of the same name still running here is refused, or killed when
    the request says ``replace``.
    """
    job, cwd = request.job, request.cwd
    if not os.path.isdir(cwd):
        raise NodeError("workdir_missing", f"working directory {cwd} does not exist")
    if request.script is not None and not os.path.isfile(os.path.join(cwd, request.script)):
        raise NodeError("script_missing", f"script {request.script} not found in {cwd}")
    try:
        running = tmux.has_session(job) or status.is_running(job)
    except tmux.TmuxMissing:
        raise NodeError("tmux_missing", "tmux is not installed (install it, e.g. apt-get install tmux)") from None
    if running:
        if not request.replace:
            raise NodeError("job_running", f"job {job} is already running here (pass --force to replace it)")
        if processes.kill(job, grace=10.0).left:
            raise NodeError("job_running", f"job {job} is already running here and could not be killed")
    run_dir = str(RunDir.of(job).path)
    watch_port = network.hold(_watch_key(job), 0) if request.want_port else None
    return preflight.finish(request, run_dir, watch_port=watch_port)


def _watch_key(job: str) -> str:
    return f"{job} teardown watch"


def _release_ports(job: str) -> None:
    """The rendezvous and teardown watch ports, held by this agent since the prepare (a
    free port closed and bound again later could be taken meanwhile): their users, torchrun
    and the supervisor's watcher, bind them once the command runs."""
    network.release(job)
    network.release(_watch_key(job))


def start(request: Start) -> Started:
    """Start the job's tmux session and its supervisor, and wait until it runs (or holds)."""
    job = request.job
    if request.hold is None:  # the command runs now; held, it runs at the commit, which releases them
        _release_ports(job)
    run = RunDir.of(job)
    with _claim(run):  # two launches of one name: the second finds the first's session
        _forget_ready(job)
        _create_session(request, run)
        try:
            with _signals_held():
                _ready[job] = detach.spawn(run)
        except OSError as exc:
            tmux.kill_session(job)  # its pane waits for a supervisor that will not come
            raise NodeError("start_failed", f"cannot fork the job's supervisor: {exc}") from None
    _wait_for_supervisor(run, held=request.hold is not None, ready=_ready.get(job))
    if request.hold is None:
        _forget_ready(job)
    return Started(session=session_name(job), run_dir=str(run.path))


_ready: dict[str, int] = {}
"""The pipe each supervisor this agent forked tells of its steps, by job (the commit waits on it too)."""


def _forget_ready(job: str) -> None:
    fd = _ready.pop(job, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGHUP, SIGINT and SIGTERM wait while the agent forks the supervisor: an agent ended
    between the session and the fork would leave the pane waiting for it forever. (Not
    around tmux: what it starts would inherit them blocked, the pane's ``cat`` among them.)"""
    held = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def _claim(run: RunDir) -> Iterator[None]:
    """This node's start of the job, one at a time (a lock file beside the run directory)."""
    import fcntl

    with run.open_lock() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


STARTUP_HOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "startup")
"""``launcher/startup`` of this node side (installed, cached or sent): its ``sitecustomize.py``
arms ``launcher stack``'s fallback in each rank. The node's own copy: a host of a fleet
without a shared disk has no launcher at the launching machine's path."""


def ranks_pythonpath(current: str | None) -> str:
    """The job's ``PYTHONPATH``: the startup hook first (it imports the user's own
    sitecustomize after it), the user's entries, then a sent node side's ``lib/``, so that
    ``launcher.context()`` imports in the ranks."""
    entries = [STARTUP_HOOK, *(p for p in (current or "").split(os.pathsep) if p and p != STARTUP_HOOK)]
    if NODE_FALLBACK_VARIABLE in os.environ:
        entries.append(os.path.join(os.path.dirname(os.environ[NODE_FALLBACK_VARIABLE]), "lib"))
    return os.pathsep.join(entries)


def _create_session(request: Start, run: RunDir) -> None:
    job = request.job
    try:
        if tmux.has_session(job):
            raise NodeError("job_running", f"job {job} is already running here")
    except tmux.TmuxMissing:
        raise NodeError("tmux_missing", "tmux is not installed") from None
    run.reset()
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    env.update(request.env)
    env["PYTHONPATH"] = ranks_pythonpath(env.get("PYTHONPATH"))
    env[JOB_MARKER] = job
    env[RUN_DIR_VARIABLE] = str(run.path)
    _write_inputs(run, request.files)
    agent_pid, agent_create_time = _me()
    spec = JobSpec(
        job=job,
        argv=request.argv,
        env=env,
        cwd=request.cwd,
        teardown=request.teardown,
        hold=request.hold,
        agent_pid=agent_pid,
        agent_create_time=agent_create_time,
    )
    run.write_spec(spec)
    complaint = tmux.new_session(job, request.cwd, ["cat", detach.make_pane(run)])
    if complaint is not None:
        raise NodeError("start_failed", f"tmux new-session failed: {complaint}")


def commit(request: Commit) -> Started:
    """Every host started: let the held command run, and wait until it does."""
    run = RunDir.of(request.job)
    if not run.is_held() and not run.has_started():
        ended = run.read_exit()
        raise NodeError("start_failed", (ended.error if ended else None) or f"job {request.job} is not held here")
    if request.address is not None or request.env:
        _finish_spec(run, request)
    run.mark_committed()
    _release_ports(request.job)
    _wake(run)
    try:
        _wait_for_supervisor(run, held=False, ready=_ready.get(request.job))
    finally:
        _forget_ready(request.job)
    return Started(session=session_name(request.job), run_dir=str(run.path))


def _finish_spec(run: RunDir, request: Commit) -> None:
    """The held command's spec, completed with what only the commit knows: the rendezvous
    address in place of ``RENDEZVOUS_ADDRESS``, and the variables that depend on it. The
    supervisor reads it again once committed."""
    spec = run.read_spec()
    if spec is None:
        raise NodeError("start_failed", f"job {request.job} has no spec here")
    address = request.address

    def put(text: str) -> str:
        if address is None or RENDEZVOUS_ADDRESS not in text:
            return text
        if ":" in address:  # IPv6: [address]:port in an endpoint, bare elsewhere (MASTER_ADDR)
            text = text.replace(RENDEZVOUS_ADDRESS + ":", f"[{address}]:")
        return text.replace(RENDEZVOUS_ADDRESS, address)

    teardown = spec.teardown
    if teardown is not None:
        teardown = dataclasses.replace(teardown, address=put(teardown.address))
    env = {name: put(value) for name, value in spec.env.items()}
    env.update(request.env)
    run.write_spec(dataclasses.replace(spec, argv=[put(a) for a in spec.argv], env=env, teardown=teardown))


def _wake(run: RunDir) -> None:
    """SIGUSR1 to the holding supervisor, if that pid is still the supervisor (pids are reused)."""
    held, forked = run.held_by(), run.read_supervisor()
    if held is None or forked is None or held != forked.pid:
        return
    if status.process_alive(forked.pid, forked.create_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(forked.pid, signal.SIGUSR1)  # else it ended, or sees the file at its next look


def _supervisor_alive(run: RunDir) -> bool:
    forked = run.read_supervisor()
    return forked is not None and status.process_alive(forked.pid, forked.create_time)


def _me() -> tuple[int, float]:
    """This agent's pid and create time, as psutil reads it (the supervisor checks both)."""
    import psutil

    me = psutil.Process()
    return me.pid, me.create_time()


def _write_inputs(run: RunDir, files: dict[str, str]) -> None:
    """``Start.files`` into the run directory, before anything of the job runs."""
    if not files:
        return
    try:
        run.write_inputs({name: base64.b64decode(data, validate=True) for name, data in files.items()})
    except (ValueError, binascii.Error) as exc:
        raise NodeError("bad_request", f"bad job file: {exc}") from None


def _wait_for_supervisor(run: RunDir, held: bool, ready: int | None) -> None:
    """Until the command runs (or, ``held``, is held): woken by the supervisor's pipe at
    each of its steps and at its end; without it (a commit through another agent), a look
    every 10 ms."""
    import select

    deadline = time.monotonic() + SUPERVISOR_START_S
    ended_early = False
    while not run.has_started() and not (held and run.is_held()):
        ended = run.read_exit()
        if ended is not None:  # the command could not start (written before started.json otherwise)
            raise NodeError("start_failed", ended.error or f"the job's command could not start (see {run.path})")
        if ended_early:
            raise NodeError("start_failed", f"the job's supervisor ended before the command started (see {run.path})")
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeError(
                "start_failed", f"the job's supervisor did not start within {SUPERVISOR_START_S:g} s (see {run.path})"
            )
        if ready is None:
            ended_early = not _supervisor_alive(run)
            time.sleep(0 if ended_early else 0.01)
        elif select.select([ready], [], [], left)[0] and not os.read(ready, 64):
            ended_early = True  # one more look at its files decides
