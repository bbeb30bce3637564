"""Measurement 2, time to all ranks ready: from Enter until every rank of
``examples/distributed_sum.py`` (one process per host, gloo) has printed its ``ok`` line.

Readiness is seen in the job's output files on the shared filesystem, for every
contender alike: the recipes redirect theirs into the workdir, the launcher's node agents
write theirs into the run directory. Polling ``launcher logs`` instead would cost an SSH
handshake per host per poll on the same two cores the job is starting on, slowing the
very thing measured; one ``launcher logs`` at the end checks that the launcher itself
shows every rank's line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import count

from bench import foreground
from bench.config import Plan
from bench.contenders import (
    Contender,
    Job,
    hosts_with_line,
    installed,
    launcher_launch,
    output_files,
    recipe_launch,
    recipe_output,
)
from bench.procs import REPO
from bench.results import Sample
from bench.site import Site

CONTENDERS: tuple[Contender, ...] = ("launcher", "xargs", "pdsh", "torchrunx", "deepspeed")
SCRIPT = "examples/distributed_sum.py"
OK_LINE = " ok\n"
READY_TIMEOUT_S = 300.0
POLL_S = 0.05
_jobs = count()


def measure_ready(site: Site, plan: Plan, record: Callable[[Sample], None]) -> None:
    contenders = installed(CONTENDERS)
    for rep in range(plan.heavy_repeat):
        shift = rep % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            number = next(_jobs)
            job = Job(f"br{number}", SCRIPT, torchrun=True, port=29500 + number % 1000)
            record(ready_once(site, job, contender, rep))


def ready_once(site: Site, job: Job, contender: Contender, rep: int) -> Sample:
    if contender == "launcher":
        argv = launcher_launch(site, job)
    elif contender in foreground.FOREGROUND:
        argv = foreground.argv(site, job.name, job.script, job.args, job.port, contender)
    else:
        recipe_output(site, job).mkdir(exist_ok=True)
        argv = recipe_launch(site, job, contender)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        # Not run_timed: the ranks start while the command still runs, and we watch them.
        if contender in foreground.FOREGROUND:  # torchrunx, deepspeed: they return when the job ends
            command = foreground.start(site, job.name, job.script, job.args, job.port, contender)
        else:
            command = subprocess.Popen(argv, cwd=REPO, env=site.env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            returned, ready = _watch(site, job, contender, command, start)
        finally:
            if command.poll() is None:  # only when interrupted: _watch waits for it
                command.kill()
            command.wait()
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    error = None
    if command.returncode != 0:
        error = f"{argv[0]} exited with {command.returncode}: {stderr[-200:]}"
    elif ready is None:
        error = _not_ready(site, job, contender)
    elif contender == "launcher":
        error = _check_launcher_logs(site, job)
    # The job ends by itself once its all-reduce has passed: wait for that (or end it).
    left = site.scrub() if error else site.settle()
    if left and error is None:
        error = f"{left} process(es) were still on the hosts 30 s after the job's ranks were done (killed)"
    return Sample("ready", contender, site.n, rep, {"ready_s": ready, "returned_s": returned}, error)


def _watch(
    site: Site, job: Job, contender: Contender, command: subprocess.Popen[bytes], start: float
) -> tuple[float, float | None]:
    """Seconds from ``start`` until the command returned, and until every rank was ready."""
    returned: float | None = None
    ready: float | None = None
    while time.perf_counter() - start < READY_TIMEOUT_S:
        if returned is None and command.poll() is not None:
            returned = time.perf_counter() - start
            if command.returncode != 0:
                break  # the launch failed: no rank will be ready
        if hosts_with_line(site, job, contender, OK_LINE) == site.n:
            ready = time.perf_counter() - start
            break
        time.sleep(POLL_S)
    if returned is None:
        command.wait(timeout=READY_TIMEOUT_S)
        returned = time.perf_counter() - start
    return returned, ready


def _not_ready(site: Site, job: Job, contender: Contender) -> str:
    """Which ranks were not ready, and the end of the first one's output."""
    ready = hosts_with_line(site, job, contender, OK_LINE)
    problem = f"only {ready} of {site.n} ranks were ready after {READY_TIMEOUT_S:g} s"
    for path in output_files(site, job, contender):
        text = path.read_text(errors="replace")
        if OK_LINE not in text:
            return f"{problem}; {path.parent.name if contender == 'launcher' else path.stem}: {text[-300:]!r}"
    return problem


def _check_launcher_logs(site: Site, job: Job) -> str | None:
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "logs", job.name],
        cwd=REPO,
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    shown = sum(1 for line in result.stdout.splitlines() if line.endswith(" ok"))
    if shown != site.n:
        return f"launcher logs shows {shown} of {site.n} ranks' ok lines"
    return None
