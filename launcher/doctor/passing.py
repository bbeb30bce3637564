"""Acting on the doctor: which hosts passed, as a hosts file (``--write-hosts``), and the
preflight of ``launcher launch --preflight bandwidth`` (refuse, or leave out, the rest)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from launcher.doctor.bandwidth import DEFAULT_MIN_RATIO, DEFAULT_SECONDS, BandwidthReport, human_rate, run_bandwidth
from launcher.doctor.checks import DoctorReport, run_doctor
from launcher.errors import LauncherError
from launcher.hosts.files import Host
from launcher.transport.agent import SshOptions


@dataclass(frozen=True)
class Preflight:
    checks: DoctorReport
    speed: BandwidthReport

    def passed(self, hosts: Sequence[Host]) -> tuple[Host, ...]:
        return passed_hosts(hosts, self.checks, self.speed)

    def failures(self) -> list[str]:
        """One line per host that did not pass, and one for a test that failed as a whole."""
        found = [f"the bandwidth test failed: {self.speed.error}"] if self.speed.error else []
        errors = {c.host: c for c in self.checks.hosts if c.level == "error"}
        for host in self.speed.hosts:
            if host.host in errors:
                finding = next(f for f in errors[host.host].findings if f.level == "error")
                found.append(f"{host.host}: {finding.check}: {finding.message}")
            elif host.slow:
                found.append(f"{host.host}: slow: {human_rate(host.bandwidth)} point to point, below the others")
        found += [f"{a} - {b}: slow link" for a, b in self.speed.slow_links]
        return found


async def run_preflight(
    hosts: Sequence[Host],
    ssh: SshOptions,
    cwd: str,
    seconds: float = DEFAULT_SECONDS,
    min_ratio: float = DEFAULT_MIN_RATIO,
) -> Preflight:
    """The usual checks, then the bandwidth test on the hosts that passed them."""
    checks = await run_doctor(hosts, ssh, cwd)
    return Preflight(checks, await run_bandwidth(hosts, checks, ssh, cwd, seconds, min_ratio))


def choose_hosts(hosts: Sequence[Host], preflight: Preflight, exclude: bool) -> tuple[Host, ...]:
    """Every host, when all passed; else the ones that passed (``exclude``) or a refusal."""
    problems = preflight.failures()
    if not problems:
        return tuple(hosts)
    kept = preflight.passed(hosts)
    if not exclude or preflight.speed.error or not kept:
        hint = "" if exclude else " (--exclude-slow leaves them out)"
        raise LauncherError(f"preflight: {'; '.join(problems)}{hint}")
    return kept


def passed_hosts(hosts: Sequence[Host], checks: DoctorReport, speed: BandwidthReport | None) -> tuple[Host, ...]:
    """The hosts with no error in the checks and, when measured, fast enough."""
    failed = {c.host for c in checks.hosts if c.level == "error"}
    measured = set(speed.passed) if speed is not None else None
    return tuple(h for h in hosts if h.label not in failed and (measured is None or h.label in measured))


def hosts_file_text(hosts: Sequence[Host], now: float | None = None) -> str:
    """A hosts file of ``hosts`` (``launcher launch --hosts``), with a comment saying whence."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    lines = [f"# the hosts that passed launcher doctor at {stamp}"]
    lines += [h.label + (f" slots={h.slots}" if h.slots is not None else "") for h in hosts]
    return "\n".join(lines) + "\n"
