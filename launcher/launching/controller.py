"""The watcher of a job launched with ``--restarts``: wait for the attempt to end, judge it
(``recovery.py``), and launch the next attempt under the same name on the hosts left.

``python -m launcher.launching.controller NAME``, started by ``launch`` (``watch.py`` says
where and why). It holds one idle connection per host while the attempt runs (the node
answers when the job ends there; no polling) and asks each for its status on that same
connection, so a dead host costs no connect timeout. What it does is in the job's record
(``attempt``, ``attempts``, ``left_out``, ``recovery``), for ``status``, ``logs`` and ``list``.

SIGTERM (``launcher kill``) stops it; in the middle of a restart, the launch it was making
is rolled back first (``launch_job`` removes what it started), so nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

from launcher.errors import HostError, JobError, LauncherError
from launcher.hosts.files import Host
from launcher.job.records import JobRecord, load_record, update_record
from launcher.job.status import JobStatus, job_status, wait_for_end
from launcher.launching import recovery
from launcher.launching.recovery import Verdict
from launcher.launching.spec import LaunchSpec
from launcher.launching.start import launch_job
from launcher.launching.watch import load_spec, register, spec_path
from launcher.protocol.messages import NodeStatus, Status
from launcher.transport.agent import NodeAgent, SshOptions

KEEPALIVE_S = 5.0
"""While an attempt runs: three missed keepalives and a host's connection is dropped (and retried)."""
WAIT_AGAIN_S = 5.0
"""When an attempt still runs somewhere after the wait (a host out of reach for long)."""


def _say(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)


async def attempt_ended(record: JobRecord, ssh: SshOptions) -> JobStatus:
    """The attempt's status once it no longer runs on any host (a lost host: as the others saw it)."""
    answers: dict[str, NodeStatus] = {}

    async def ask(agent: NodeAgent) -> None:
        answers[agent.host.label] = await agent.call(Status(job=record.name), timeout=60)

    await wait_for_end(record, replace(ssh, keepalive=KEEPALIVE_S), on_problem=lambda h, p: _say(f"{h}: {p}"), then=ask)
    return await job_status(record, ssh, answers)


async def watch_job(name: str) -> int:
    """Watch job ``name`` to its end; 0 if it succeeded or was killed, 1 if it failed."""
    spec = load_spec(name)
    record = register(name)
    _say(f"watching {name}: attempt {record.attempt}, up to {record.restarts} restart(s)")
    ssh = replace(spec.ssh, python=spec.python)
    ordinary = 0
    while True:
        status = await attempt_ended(record, ssh)
        verdict = recovery.judge(status, ordinary)
        if verdict.action == "wait":
            await asyncio.sleep(WAIT_AGAIN_S)
            record = load_record(name)
            continue
        record = _close_attempt(record, status.state, verdict)
        _say(f"attempt {record.attempt} ended: {status.state}: {verdict.reason}")
        if verdict.action == "done":
            return _finish(name, f"ended: {verdict.reason} at attempt {record.attempt}", 0)
        if verdict.action == "give_up":
            return _finish(name, f"gave up: {verdict.reason}", 1)
        if record.attempt > record.restarts:
            return _finish(name, f"gave up: all {record.restarts} restart(s) used; last: {verdict.reason}", 1)
        ordinary += verdict.ordinary
        left_out, current = dict(record.left_out), record.hosts
        if verdict.blame is not None:
            left_out = recovery.leave_out(left_out, verdict.blame, verdict.reason, time.time())
            current = tuple(h for h in current if h.label != verdict.blame)
        relaunched = await _relaunch(spec, record, current, left_out)
        if relaunched is None:
            return 1
        record = relaunched
        _say(f"attempt {record.attempt} running on {', '.join(h.label for h in record.hosts)}")


async def _relaunch(
    spec: LaunchSpec, record: JobRecord, current: Sequence[Host], left_out: dict[str, dict[str, object]]
) -> JobRecord | None:
    """Launch the next attempt; a host that fails the launch's checks is left out in turn,
    and the next candidate tried (no restart spent). None when it gave up."""
    name, number = record.name, record.attempt + 1
    known = {h.label: h for h in (*spec.hosts, *spec.spares)}
    minimum, _ = recovery.nnodes_range(spec.nnodes, len(spec.hosts))
    spares = list(record.spares)
    while True:
        now = time.time()
        cooling = recovery.cooling(left_out, now)
        returning = [known[label] for label in left_out if label in known and label not in cooling]
        try:
            hosts, taken = recovery.next_hosts(current, len(spec.hosts), minimum, spares, returning, left_out, now)
        except recovery.NoHostsLeft as exc:
            return _give_up(name, str(exc), left_out)
        spares = [h for h in spares if h not in taken]
        labels = ", ".join(h.label for h in hosts)
        update_record(
            name,
            hosts=hosts,
            spares=tuple(spares),
            left_out=left_out,
            recovery=f"restarting: attempt {number} on {labels}",
        )
        _say(f"launching attempt {number} on {labels}")
        nnodes = f"{minimum}:{len(hosts)}" if spec.nnodes is not None else None
        attempt = replace(spec, hosts=hosts, name=name, force=True, attempt=number, nnodes=nnodes)
        try:
            await launch_job(attempt)  # it notes the attempt in the record
        except (JobError, HostError) as exc:
            failed = exc.errors if isinstance(exc, JobError) else {exc.host: exc}
            if not failed or not set(failed) <= set(known):
                return _give_up(name, f"attempt {number} could not start: {exc}", left_out)
            for label, error in failed.items():
                left_out = recovery.leave_out(left_out, label, f"failed its checks: {error.message}", time.time())
                _say(f"{label} left out: {error.message}")
            current = tuple(h for h in hosts if h.label not in failed)
            continue
        except LauncherError as exc:
            return _give_up(name, f"attempt {number} could not start: {exc}", left_out)
        return update_record(name, recovery=f"watching attempt {number}", left_out=left_out)


def _close_attempt(record: JobRecord, state: str, verdict: Verdict) -> JobRecord:
    """The record with the attempt's end noted in its history."""
    history = list(load_record(record.name).attempts)
    if history and history[-1].get("number") == record.attempt:
        history[-1] = {**history[-1], "ended_at": time.time(), "state": state, "cause": verdict.reason}
    return update_record(record.name, attempts=tuple(history))


def _give_up(name: str, why: str, left_out: dict[str, dict[str, object]]) -> JobRecord | None:
    """None, once the record says the watcher gave up, and why."""
    update_record(name, left_out=left_out)
    _finish(name, f"gave up: {why}", 1)
    return None


def _finish(name: str, recovery_line: str, code: int) -> int:
    _say(recovery_line)
    update_record(name, recovery=recovery_line)
    with contextlib.suppress(OSError):
        spec_path(name).unlink()
    return code


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m launcher.launching.controller NAME", file=sys.stderr)
        return 2
    (name,) = argv

    async def run() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await watch_job(name)
        except asyncio.CancelledError:  # launcher kill: a restart in progress was rolled back
            return _finish(name, "stopped: the job was killed", 0)

    try:
        return asyncio.run(run())
    except LauncherError as exc:
        return _finish(name, f"stopped: {exc}", 1)
    except Exception as exc:  # a bug: the record says so, the log has the traceback
        _finish(name, f"stopped: {type(exc).__name__}: {exc} (see {name}.watcher.log)", 1)
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
