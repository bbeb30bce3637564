"""Runs every measurement at every host count, one fresh cluster per count."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.config import Plan
from bench.contenders import floor
from bench.control import measure_control
from bench.foreground import FOREGROUND, missing
from bench.hygiene import StaleLockWatch
from bench.kill import measure_kill
from bench.launch import measure_launch
from bench.logs import measure_logs
from bench.machine import describe_machine
from bench.procs import run_timed
from bench.ready import measure_ready
from bench.results import Results, Sample
from bench.site import Site, open_site
from bench.startup import measure_startup


def run_benchmark(plan: Plan, save_to: Path, progress: Callable[[str], None]) -> Results:
    """Measure everything ``plan`` asks for; the raw numbers are saved after each host count."""
    recorder = _Recorder(Results(describe_machine(), plan.as_dict()), progress)
    for contender in FOREGROUND:
        why = missing(contender)
        if why:
            # Optional (not in .ci/setup): the smoke test runs without them.
            progress(f"skipping {contender}: {why}")
            recorder.results.notes.append(f"not measured: {why}")
    progress("start-up")
    measure_startup(2 * plan.repeat, recorder.record)
    # Under /tmp is fine: the cluster binds its workdir back over each host's private /tmp.
    workroot = Path(tempfile.mkdtemp(prefix="lnch-bench-"))
    try:
        with StaleLockWatch(recorder.stale_lock):
            for n in plan.host_counts:
                recorder.results.notes.extend(_load_note(n))
                try:
                    _measure_at(n, workroot / f"n{n}", plan, recorder, progress)
                except Exception as error:  # noqa: BLE001 - a cluster that cannot start is a finding
                    # From 64 hosts on a cluster may fail to start or answer: say so and go on.
                    note = f"{n} host(s): no measurement ({type(error).__name__}: {error})"
                    recorder.results.notes.append(note)
                    progress(f"FAILED: {note}")
                recorder.save(save_to)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    recorder.save(save_to)
    return recorder.results


def _measure_at(n: int, workdir: Path, plan: Plan, recorder: _Recorder, progress: Callable[[str], None]) -> None:
    with open_site(n, workdir) as site:
        _warm_up(site)
        for key in plan.measures_at(n):
            name, measure = MEASUREMENTS[key]
            progress(f"{n} host(s): {name}")
            measure(site, plan, recorder.record)


MEASUREMENTS = {
    "launch": ("launch", measure_launch),
    "control": ("status and kill of the light job", measure_control),
    "ready": ("time to ready", measure_ready),
    "kill": ("kill", measure_kill),
    "logs": ("logs", measure_logs),
}


class _Recorder:
    """Collects samples with the time each took, and fails those a stale lock slowed."""

    def __init__(self, results: Results, progress: Callable[[str], None]) -> None:
        self.results = results
        self._progress = progress
        self._began = time.monotonic()
        self._windows: list[tuple[float, float]] = []
        """(start, end) of each sample in Unix time: from the end of the one before."""
        self._last = time.time()
        self._stale: list[tuple[float, float]] = []
        self._lock = threading.Lock()  # stale_lock() runs in the watch's thread

    def record(self, sample: Sample) -> None:
        with self._lock:
            self.results.add(sample)
            now = time.time()
            self._windows.append((self._last, now))
            self._last = now
            for created, removed in self._stale:
                self._invalidate_overlapping(created, removed)
        self._progress(f"{time.monotonic() - self._began:6.0f}s {_describe(sample)}")

    def stale_lock(self, created: float, removed: float) -> None:
        when = f"{_clock(created)}-{_clock(removed)}"
        with self._lock:
            self.results.notes.append(f"a stale pyenv rehash lock stood {when}; removed (see bench/hygiene.py)")
            self._stale.append((created, removed))
            self._invalidate_overlapping(created, removed)
        self._progress(f"removed a stale pyenv rehash lock ({when}); the runs it slowed are marked failed")

    def _invalidate_overlapping(self, created: float, removed: float) -> None:
        for index, (start, end) in enumerate(self._windows):
            if start < removed and end > created:
                when = f"{_clock(created)}-{_clock(removed)}"
                self.results.invalidate(index, f"slowed by the stale pyenv rehash lock of {when}")

    def save(self, path: Path) -> None:
        with self._lock:
            self.results.save(path)


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _warm_up(site: Site) -> None:
    """One untimed connection to every host: page cache and sshd's first fork are not measured."""
    run = run_timed(floor(site), site.env())
    if not run.ok:
        raise RuntimeError(f"the cluster of {site.n} hosts does not answer: {run.problem()}")


def _load_note(n: int) -> list[str]:
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load < 0.5 * cores:
        return []
    return [f"load average {load:.2f} on {cores} cores when the {n}-host runs started ({time.strftime('%H:%M:%S')})"]


def _describe(sample: Sample) -> str:
    shown = ", ".join(f"{k} {v:.3g}" for k, v in sample.values.items() if v is not None and k != "expected")
    where = f"{sample.hosts} host(s) " if sample.hosts else ""
    line = f"{sample.measure:<16} {sample.contender:<28} {where}#{sample.rep}: {shown}"
    return line + (f"  FAILED: {sample.error}" if sample.error else "")
