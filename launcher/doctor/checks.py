"""``launcher doctor``: check every host at once for what a launch needs, start nothing.

Each host answers a ``Checkup`` (``node/doctor.py``); the first host listens on a port
where a launch would put the rendezvous, the others connect to it, as a launch's prepare
does. Every finding is ok, a warning or an error; values that differ between hosts
(Python, torch, CUDA, NCCL, tmux) are flagged. A host that cannot be reached is one
error, and the others are still checked. The first host's listener ends with its agent,
once every other host has probed it: nothing is left behind anywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from launcher.errors import AgentError, HostError, LauncherError, VersionMismatchError
from launcher.hosts.files import Host
from launcher.launching import rendezvous
from launcher.launching.commands import rdzv_endpoint
from launcher.protocol.doctor import Checkup, NodeReport
from launcher.transport.agent import NodeAgent, SshOptions, open_agent
from launcher.transport.fanout import raise_open_files_limit

Level = Literal["ok", "warning", "error"]
SLOW_SSH_S = 3.0
CLOCK_WARNING_S = 1.0
DISK_WARNING = 5 << 30
DISK_ERROR = 512 << 20
_COMPARED = ("python_version", "torch", "cuda", "nccl", "tmux")
_NAMES = {"python_version": "Python", "torch": "torch", "cuda": "CUDA", "nccl": "NCCL", "tmux": "tmux"}


@dataclass(frozen=True)
class Finding:
    check: str
    """ssh, clock, tmux, python, launcher, torch, gpus, disk, network."""
    level: Level
    message: str


@dataclass(frozen=True)
class HostCheck:
    """One host: how it answered, and what was found."""

    host: str
    ssh_s: float | None
    """Connecting, logging in and starting the agent; None: unreachable."""
    clock_offset_s: float | None
    """The host's clock minus this machine's (± half the round trip)."""
    report: NodeReport | None
    findings: tuple[Finding, ...]
    interface: str | None = None
    """The interface this host would reach the first host's rendezvous over."""
    node_side: str | None = None
    """How its node side came: ``installed``, ``cached`` or ``sent`` (``transport/node_side.py``)."""

    @property
    def level(self) -> Level:
        levels = {f.level for f in self.findings}
        return "error" if "error" in levels else "warning" if "warning" in levels else "ok"


@dataclass(frozen=True)
class DoctorReport:
    hosts: tuple[HostCheck, ...]
    rendezvous: str | None
    """Where the first host listened (``address:port``), the first address every host reached."""

    @property
    def ok(self) -> bool:
        return all(h.level != "error" for h in self.hosts)


@dataclass
class _Answer:
    ssh_s: float | None = None
    offset: float | None = None
    report: NodeReport | None = None
    error: str | None = None
    failed: str = "ssh"
    """The check an error is about: ssh, launcher (another version), python (no agent)."""
    node_side: str | None = None
    python: str | None = None


async def run_doctor(hosts: Sequence[Host], ssh: SshOptions, cwd: str, port: int | None = None) -> DoctorReport:
    """Check every host at once (``ssh.max_parallel`` handshakes in flight)."""
    if not hosts:
        raise LauncherError("no hosts to check")
    raise_open_files_limit(len(hosts))
    gate = asyncio.Semaphore(ssh.max_parallel)
    answers = [_Answer() for _ in hosts]
    first_ready: asyncio.Future[tuple[NodeReport, str | None] | None] = asyncio.get_running_loop().create_future()
    agents: list[NodeAgent | None] = [None] * len(hosts)

    async def check(index: int) -> None:
        answer = answers[index]
        try:
            began = time.monotonic()
            agent = agents[index] = await open_agent(hosts[index], ssh, gate)
            answer.ssh_s = time.monotonic() - began
            answer.node_side, answer.python = agent.node_side, agent.hello.python if agent.hello else None
            request = Checkup(cwd=cwd, listen=index == 0, port=port if index == 0 else None)
            if index > 0:
                first = await first_ready
                if first is not None and first[0].port is not None:
                    addresses = rendezvous.probe_addresses(first[0], first[1], agent.local_address)
                    request = Checkup(cwd=cwd, probe=addresses, probe_port=first[0].port)
            sent = time.time()
            answer.report = await agent.call(request, timeout=60)
            back = time.time()
            # NTP's offset: the node's work between receiving and answering does not count.
            answer.offset = ((answer.report.received - sent) + (answer.report.time - back)) / 2
        except HostError as exc:
            answer.error = exc.message
            if isinstance(exc, VersionMismatchError):
                answer.failed = "launcher"
            elif isinstance(exc, AgentError) and answer.ssh_s is None:
                answer.failed = "python"
        finally:
            if index == 0 and not first_ready.done():
                address = agents[0].hello.address if agents[0] and agents[0].hello else None
                first_ready.set_result((answer.report, address) if answer.report else None)

    tasks = [asyncio.ensure_future(check(i)) for i in range(len(hosts))]
    try:
        await asyncio.gather(*tasks[1:])
        await tasks[0]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The first host's listener goes with its agent: only now, after every probe.
        await asyncio.gather(*(a.close() for a in agents if a is not None), return_exceptions=True)
    return evaluate(hosts, answers)


def evaluate(hosts: Sequence[Host], answers: Sequence[_Answer]) -> DoctorReport:
    """Findings per host, from the answers (pure: the tests feed it answers)."""
    reports = [a.report for a in answers]
    usual = {name: _most_common([getattr(r, name) for r in reports if r is not None]) for name in _COMPARED}
    meeting, interfaces = _meeting(hosts, answers)
    checks = []
    for index, (host, answer) in enumerate(zip(hosts, answers, strict=True)):
        report = answer.report
        if report is None:
            finding = Finding(answer.failed, "error", answer.error or "no answer")
            checks.append(HostCheck(host.label, answer.ssh_s, None, None, (finding,)))
            continue
        findings = [
            *_ssh_and_clock(answer),
            *_node_side(answer),
            *_software(report, usual),
            *_gpus(report),
            *_disks(report),
            *_network(index, answers, meeting),
        ]
        checks.append(
            HostCheck(
                host.label, answer.ssh_s, answer.offset, report, tuple(findings), interfaces[index], answer.node_side
            )
        )
    return DoctorReport(tuple(checks), meeting)


def _meeting(hosts: Sequence[Host], answers: Sequence[_Answer]) -> tuple[str | None, list[str | None]]:
    """The rendezvous every host reached (``address:port``), and each host's interface to it."""
    first = answers[0].report
    nothing: list[str | None] = [None] * len(hosts)
    if first is None or first.port is None:
        return None, nothing
    reached = [{p.address for p in a.report.probes if p.ok} for a in answers[1:] if a.report is not None]
    for candidate in [p.address for p in first.probes]:
        if all(candidate in seen for seen in reached):
            interfaces = [
                next((p.interface for p in a.report.probes if p.address == candidate and p.ok), None)
                if a.report
                else None
                for a in answers
            ]
            return rdzv_endpoint(candidate, first.port), interfaces
    return None, [_route(a) for a in answers]


def _route(answer: _Answer) -> str | None:
    probes = answer.report.probes if answer.report else []
    return next((p.interface for p in probes if p.interface), None)


def _ssh_and_clock(answer: _Answer) -> list[Finding]:
    found = []
    if answer.ssh_s is not None:
        level: Level = "warning" if answer.ssh_s > SLOW_SSH_S else "ok"
        found.append(Finding("ssh", level, f"connecting and starting the agent took {answer.ssh_s:.1f} s"))
    if answer.offset is not None:
        level = "warning" if abs(answer.offset) > CLOCK_WARNING_S else "ok"
        found.append(Finding("clock", level, f"clock {answer.offset:+.1f} s from this machine's"))
    return found


def _node_side(answer: _Answer) -> list[Finding]:
    if answer.node_side is None:
        return []
    how = {"installed": "installed there", "cached": "from its cache", "sent": "sent from here"}
    where = f" on {answer.python}" if answer.python else ""
    return [Finding("launcher", "ok", f"launcher's node side {how.get(answer.node_side, answer.node_side)}{where}")]


def _software(report: NodeReport, usual: dict[str, str | None]) -> list[Finding]:
    found = []
    if report.tmux is None:
        found.append(Finding("tmux", "error", "tmux is not installed (a launch runs each job in tmux)"))
    elif report.tmux.startswith("unusable"):
        found.append(Finding("tmux", "error", f"tmux is {report.tmux}"))
    if report.torch is None:
        found.append(Finding("torch", "error", "torch is not installed for the agent's Python (pip install torch)"))
    for name in _COMPARED:
        mine, common = getattr(report, name), usual[name]
        if mine != common and (mine is not None or name in ("cuda", "nccl")):
            found.append(
                Finding(name, "warning", f"{_NAMES[name]} {mine or 'none'} here, {common or 'none'} on most hosts")
            )
    return found


def _gpus(report: NodeReport) -> list[Finding]:
    gpus = report.gpus
    found = [Finding("gpus", "error", f"{busy}, of no launcher job (a launch refuses it)") for busy in gpus.busy]
    if gpus.count == 0:
        found.append(Finding("gpus", "ok", f"no GPU ({gpus.note}): one process per host by default"))
    for gpu in report.gpu_health:  # node/gpu_health.py: nvidia-smi -q
        found += [Finding("gpus", "error", f"GPU {gpu.index} ({gpu.name}): {e}") for e in gpu.errors]
        found += [Finding("gpus", "warning", f"GPU {gpu.index} ({gpu.name}): {w}") for w in gpu.warnings]
    return found


def _disks(report: NodeReport) -> list[Finding]:
    found = []
    for disk in report.disks:
        if disk.what == "working directory" and not disk.exists:
            found.append(Finding("disk", "error", f"the working directory {disk.path} does not exist"))
        if disk.free is None:
            found.append(Finding("disk", "warning", f"free space of the {disk.what} unknown: {disk.error}"))
        elif disk.free < DISK_ERROR or disk.free < DISK_WARNING:
            level: Level = "error" if disk.free < DISK_ERROR else "warning"
            found.append(Finding("disk", level, f"only {human_bytes(disk.free)} free in the {disk.what} {disk.path}"))
    return found


def _network(index: int, answers: Sequence[_Answer], meeting: str | None) -> list[Finding]:
    first = answers[0].report
    if first is None:
        return [Finding("network", "warning", "not checked: the first host could not be asked")]
    report = answers[index].report
    if index == 0 or report is None:
        return []
    if meeting is not None:
        return []
    tried = [p for p in report.probes if p.ok is not None]
    if any(p.ok for p in tried):  # this host got through, another did not
        return [Finding("network", "ok", "reached the first host (another host did not)")]
    return [Finding("network", "error", rendezvous.unreachable_message(tried))]


def _most_common(values: Sequence[str | None]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def human_bytes(count: int) -> str:
    """``79G``, ``4.2G``, ``310M``."""
    if count >= 10 << 30:
        return f"{count / (1 << 30):.0f}G"
    if count >= 1 << 30:
        return f"{count / (1 << 30):.1f}G"
    return f"{count / (1 << 20):.0f}M"
