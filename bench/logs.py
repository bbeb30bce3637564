"""Measurement 4, logs: latency from a rank printing a line to ``launcher logs --follow``
printing it, and the follower's memory and CPU, with every host printing 100 lines a second.

Each line carries the time it was printed (``bench/jobs/ticker.py``); the follower's line
is stamped when this process reads it from the follower's stdout. The follower starts
from the beginning of the output, so each host's first second after its first line
arrives (the backlog, replayed at once) is left out of the latency.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count

import psutil

from bench.config import Plan
from bench.contenders import Job, start
from bench.procs import REPO
from bench.results import Sample
from bench.site import Site

WARM_UP_S = 1.0
SAMPLE_EVERY_S = 0.2
_TICK = re.compile(r"^\[(\S+)[^\]]*\] tick (\d+\.\d+) (\d+)$")
_jobs = count()


@dataclass
class _Received:
    """What the follower printed: (host, printed at, received at) per tick line."""

    lines: list[tuple[str, float, float]] = field(default_factory=list)
    other: int = 0


def measure_logs(site: Site, plan: Plan, record: Callable[[Sample], None]) -> None:
    number = next(_jobs)
    name = f"bg{number}"
    args = (name, "--rate", f"{plan.log_rate:g}", "--seconds", f"{plan.log_seconds:g}")
    job = Job(name, "bench/jobs/ticker.py", args)
    launched = start(site, job, "launcher")
    if not launched.ok:
        record(Sample("logs", "launcher", site.n, 0, {}, f"launch failed: {launched.problem()}"))
        return
    follower = subprocess.Popen(
        [sys.executable, "-m", "launcher", "logs", "--follow", name],
        cwd=REPO,
        env=site.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    received = _Received()
    reader = threading.Thread(target=_read, args=(follower, received), daemon=True)
    reader.start()
    try:
        usage = _watch_usage(follower, timeout=plan.log_seconds + 120)
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.wait()
    reader.join(timeout=10)
    site.settle()  # the ticker has ended by itself
    expected = int(plan.log_rate * plan.log_seconds) * site.n
    record(Sample("logs", "launcher", site.n, 0, {**_latencies(received), **usage, "expected": expected}))


def _read(follower: subprocess.Popen[str], received: _Received) -> None:
    assert follower.stdout is not None  # we asked for a pipe
    for line in follower.stdout:
        now = time.time()
        match = _TICK.match(line.rstrip("\n"))
        if match:
            received.lines.append((match.group(1), float(match.group(2)), now))
        else:
            received.other += 1


def _watch_usage(follower: subprocess.Popen[str], timeout: float) -> dict[str, float | None]:
    """Peak RSS and CPU of the follower, sampled until it exits (when the job has ended)."""
    proc = psutil.Process(follower.pid)
    peak_rss = 0
    samples: list[tuple[float, float]] = []  # (wall, cpu seconds)
    deadline = time.monotonic() + timeout
    while follower.poll() is None and time.monotonic() < deadline:
        try:
            peak_rss = max(peak_rss, proc.memory_info().rss)
            times = proc.cpu_times()
            samples.append((time.monotonic(), times.user + times.system))
        except psutil.NoSuchProcess:
            break
        time.sleep(SAMPLE_EVERY_S)
    # CPU share over the second half of its life: connected and streaming, not starting.
    steady = samples[len(samples) // 2 :]
    cpu = None
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        cpu = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
    return {
        "rss_mb": peak_rss / 2**20,
        "cpu_fraction": cpu,
        "cpu_s": samples[-1][1] if samples else None,
        "follow_s": samples[-1][0] - samples[0][0] if samples else None,
    }


def _latencies(received: _Received) -> dict[str, float | None]:
    first: dict[str, float] = {}
    for host, _, at in received.lines:
        first.setdefault(host, at)
    latencies = sorted(at - printed for host, printed, at in received.lines if printed >= first[host] + WARM_UP_S)
    if not latencies:
        return {"received": len(received.lines), "p50_s": None, "p95_s": None, "max_s": None}
    return {
        "received": len(received.lines),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "max_s": latencies[-1],
    }
