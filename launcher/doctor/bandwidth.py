"""``launcher doctor --bandwidth``: a short collective test across the hosts, the slow one named.

After the usual checks, every host that passed them runs ``launcher.bandwidth_job`` as a
job of its own (``--runner exec``, one process per host, rank i on the i-th host), through
the same launch as any job. Its rank 0 prints the figures as one marked line of JSON, read
back here from the job's logs; ``evaluate_bandwidth`` judges them (pure). A host that
could not take part (an error in the usual checks: no torch, the rendezvous blocked, busy
GPUs, unreachable) is named with its reason and the others are still measured. The test is
bounded: past ``seconds`` it is killed on every host, the kill verified there.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from launcher.doctor.checks import DoctorReport
from launcher.errors import LauncherError, message_of
from launcher.hosts.files import Host
from launcher.job.kill import kill_job
from launcher.job.logs import read_logs
from launcher.job.records import JobRecord, unique_job_name
from launcher.job.status import job_status, wait_for_end
from launcher.launching.commands import default_job_name
from launcher.launching.spec import make_spec
from launcher.launching.start import launch_job
from launcher.protocol.doctor import BANDWIDTH_MARKER, BANDWIDTH_MODULE
from launcher.transport.agent import SshOptions

DEFAULT_SECONDS = 60.0
DEFAULT_MIN_RATIO = 0.5
_KILL_GRACE_S = 2.0


@dataclass(frozen=True)
class HostBandwidth:
    """One host: its best point-to-point figures, or why it did not take part."""

    host: str
    bandwidth: float | None = None
    """Bytes per second each way, the best this host reached with any partner."""
    latency_s: float | None = None
    """One-way latency of a small message, the best with any partner."""
    slow: bool = False
    """Below ``min_ratio`` of the median host."""
    error: str | None = None
    """Why it was not measured (the others were)."""

    @property
    def level(self) -> str:
        return "error" if self.error or self.slow else "ok"


@dataclass(frozen=True)
class SizeFigure:
    """One all-reduce size, timed as the slowest rank saw it."""

    bytes: int
    seconds: float
    bus_bandwidth: float
    """Bytes per second, nccl-tests' bus bandwidth: size x 2(n-1)/n / time."""


@dataclass(frozen=True)
class PairFigure:
    a: str
    b: str
    bandwidth: float
    latency_s: float


GPU_MIN_RATIO = 0.8
"""A GPU below this fraction of the median matmul of its model (on every host) is slow."""


@dataclass(frozen=True)
class GpuSpeed:
    host: str
    index: int
    name: str
    tflops: float
    slow: bool = False


@dataclass(frozen=True)
class BandwidthReport:
    hosts: tuple[HostBandwidth, ...]
    backend: str | None = None
    bus_bandwidth: float | None = None
    """The whole set's, at the largest all-reduce measured."""
    latency_s: float | None = None
    """A one-float all-reduce of the whole set."""
    allreduce: tuple[SizeFigure, ...] = ()
    pairs: tuple[PairFigure, ...] = ()
    slow_links: tuple[tuple[str, str], ...] = ()
    """Pairs below ``min_ratio`` of the median pair, neither of them a slow host."""
    gpus: tuple[GpuSpeed, ...] = ()
    """With NCCL: every GPU's matmul, ``slow`` against the median of its model."""
    seconds: float = 0.0
    """The test's duration, launch to figures."""
    error: str | None = None
    """The test as a whole failed (it did not start, did not finish in time...)."""

    @property
    def ok(self) -> bool:
        fine = not self.slow_links and not any(g.slow for g in self.gpus)
        return self.error is None and fine and all(h.level == "ok" for h in self.hosts)

    @property
    def passed(self) -> tuple[str, ...]:
        """The hosts measured and not slow."""
        slow_gpus = {g.host for g in self.gpus if g.slow}
        if self.error is not None:
            return ()
        return tuple(h.host for h in self.hosts if h.level == "ok" and h.host not in slow_gpus)


async def run_bandwidth(
    hosts: Sequence[Host],
    checks: DoctorReport,
    ssh: SshOptions,
    cwd: str,
    seconds: float = DEFAULT_SECONDS,
    min_ratio: float = DEFAULT_MIN_RATIO,
) -> BandwidthReport:
    """The test on every host the usual checks passed (``checks``), bounded by ``seconds``."""
    reasons = {c.host: _reason(c.findings) for c in checks.hosts if c.level == "error"}
    joining = [h for h in hosts if h.label not in reasons]
    left_out = [HostBandwidth(label, error=f"not tested: {why}") for label, why in reasons.items()]
    began = time.monotonic()
    if not joining:
        return BandwidthReport(tuple(left_out), error="no host passed the checks")
    args = ["-u", "-m", BANDWIDTH_MODULE, "--seconds", f"{seconds:g}", "--min-ratio", f"{min_ratio:g}"]
    spec = make_spec(
        ssh.python, args, hosts=joining, runner="exec", nproc_per_node=1, python=ssh.python, cwd=cwd,
        name=unique_job_name(default_job_name("doctor-bandwidth")),
        connect_timeout=ssh.connect_timeout, max_parallel=ssh.max_parallel, forward_env=False,
    )  # fmt: skip
    try:
        async with asyncio.timeout(seconds):
            record = await launch_job(spec)  # all or nothing: a failed start leaves nothing
    except (LauncherError, TimeoutError) as exc:
        why = f"did not start within {seconds:g} s" if isinstance(exc, TimeoutError) else message_of(exc)
        return _failed(hosts, left_out, f"the test could not start: {why}", began)
    ssh = replace(ssh, python=spec.python)
    try:
        data, error = await _wait_and_read(record, ssh, seconds, seconds - (time.monotonic() - began))
    except BaseException:  # interrupted: the test never outlives the doctor
        await asyncio.shield(kill_job(record, _KILL_GRACE_S, ssh))
        raise
    if data is None:
        return _failed(hosts, left_out, error, began)
    labels = [h.label for h in joining]
    report = evaluate_bandwidth(labels, data, min_ratio)
    order = {h.label: i for i, h in enumerate(hosts)}
    every = sorted([*report.hosts, *left_out], key=lambda h: order.get(h.host, len(order)))
    return replace(report, hosts=tuple(every), seconds=time.monotonic() - began)


async def _wait_and_read(
    record: JobRecord, ssh: SshOptions, bound: float, seconds: float
) -> tuple[dict[str, Any] | None, str]:
    """The figures rank 0 printed, or None and why; past ``seconds`` more the job is killed, verified."""
    try:
        async with asyncio.timeout(max(seconds, 1.0)):
            await wait_for_end(record, ssh, reconnect_for=seconds)
    except TimeoutError:
        kills = await kill_job(record, _KILL_GRACE_S, ssh)
        stuck = [f"{k.host}: {k.message}" for k in kills if not k.verified]
        left = f"; not verified stopped: {'; '.join(stuck)}" if stuck else ", stopped on every host"
        return None, f"the test did not finish within {bound:g} s{left}"
    lines, _ = await read_logs(record, ssh)
    for line in lines:
        text = line.text.strip()
        if text.startswith(BANDWIDTH_MARKER):
            return json.loads(text.removeprefix(BANDWIDTH_MARKER)), ""
    status = await job_status(record, ssh)
    root = status.root_cause
    if root is not None:
        return None, f"the test failed on {root.host}: {root.exception}"
    return None, f"the test ended ({status.state}) without its figures"


def _failed(hosts: Sequence[Host], left_out: list[HostBandwidth], error: str, began: float) -> BandwidthReport:
    named = {h.host: h for h in left_out}
    every = [named.get(h.label, HostBandwidth(h.label, error="not measured: the test failed")) for h in hosts]
    return BandwidthReport(tuple(every), error=error, seconds=time.monotonic() - began)


def _reason(findings: Sequence[Any]) -> str:
    return next((f"{f.check}: {f.message}" for f in findings if f.level == "error"), "failed the checks")


def evaluate_bandwidth(labels: Sequence[str], data: dict[str, Any], min_ratio: float) -> BandwidthReport:
    """The figures of the job's rank 0 (rank i: ``labels[i]``), judged (pure: the tests feed it)."""
    sizes = tuple(
        SizeFigure(int(s["bytes"]), float(s["seconds"]), float(s["bus_bandwidth"])) for s in data["allreduce"]
    )
    pairs = tuple(
        PairFigure(labels[int(p["a"])], labels[int(p["b"])], float(p["bandwidth"]), float(p["latency_s"]))
        for p in data["pairs"]
    )
    best: dict[str, float] = {}
    latency: dict[str, float] = {}
    for pair in pairs:
        for end in (pair.a, pair.b):
            best[end] = max(best.get(end, 0.0), pair.bandwidth)
            latency[end] = min(latency.get(end, float("inf")), pair.latency_s)
    median = statistics.median(best.values()) if best else 0.0
    slow = {h for h, b in best.items() if b < min_ratio * median}
    pair_median = statistics.median(p.bandwidth for p in pairs) if pairs else 0.0
    links = tuple(
        (p.a, p.b) for p in pairs if p.bandwidth < min_ratio * pair_median and p.a not in slow and p.b not in slow
    )
    hosts = tuple(HostBandwidth(h, best.get(h), latency.get(h), h in slow) for h in labels)
    return BandwidthReport(
        hosts,
        gpus=judge_gpus(labels, data.get("gpus") or []),
        backend=str(data.get("backend")),
        bus_bandwidth=sizes[-1].bus_bandwidth if sizes else None,
        latency_s=float(data["latency_s"]),
        allreduce=sizes,
        pairs=pairs,
        slow_links=links,
    )


def judge_gpus(labels: Sequence[str], per_rank: Sequence[Sequence[dict[str, Any]] | None]) -> tuple[GpuSpeed, ...]:
    """Each GPU against the median of the GPUs of its model, on every host (pure)."""
    found = [
        GpuSpeed(label, int(g["index"]), str(g["name"]), float(g["tflops"]))
        for label, gpus in zip(labels, per_rank, strict=False)
        for g in gpus or ()
    ]
    medians = {name: statistics.median(g.tflops for g in found if g.name == name) for name in {g.name for g in found}}
    return tuple(replace(g, slow=g.tflops < GPU_MIN_RATIO * medians[g.name]) for g in found)


def human_rate(rate: float | None) -> str:
    """``1.2 GB/s``, ``310 MB/s``, ``1.2 MB/s`` (bytes per second, decimal units as NICs are rated)."""
    if rate is None:
        return "-"
    for unit, scale in (("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.{1 if rate < 10 * scale else 0}f} {unit}"
    return f"{rate:.0f} B/s"
