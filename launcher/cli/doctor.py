"""``launcher doctor``: one table, one row per host, the findings that are not ok below it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from launcher.cli.common import HOSTS_HELP, connect_timeout, run

if TYPE_CHECKING:
    from launcher.doctor.bandwidth import BandwidthReport
    from launcher.doctor.checks import DoctorReport, HostCheck
    from launcher.hosts.files import Host
    from launcher.launching.spec import LaunchSpec


@click.command()
@click.option("--hosts", "hosts_arg", metavar="FILE", help=HOSTS_HELP + "  [default: localhost]")
@click.option("--python", metavar="PATH", help="Python on the hosts.  [default: this one]")
@click.option("--cwd", metavar="DIR", help="Working directory on the hosts.  [default: this one]")
@click.option("--rdzv-port", type=click.IntRange(1, 65535), help="Check this rendezvous port.  [default: a free one]")
@connect_timeout
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--bandwidth", is_flag=True, help="Then measure the hosts: a short collective test, the slow host named.")
@click.option(
    "--bandwidth-seconds", type=click.FloatRange(5, 600), default=60.0, show_default=True,
    help="The bandwidth test's bound: past it, it is stopped on every host.",
)  # fmt: skip
@click.option(
    "--min-ratio", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
    help="A host below this fraction of the median host's bandwidth is slow.",
)  # fmt: skip
@click.option("--write-hosts", metavar="FILE", help="Write the hosts that passed to FILE, a hosts file.")
@click.pass_context
def doctor(ctx: click.Context, /, **options: Any) -> None:
    """Check every host for what a launch needs; start nothing, leave nothing.

    SSH, clock, tmux, Python, launcher, torch/CUDA/NCCL, GPUs, free disk, and the
    network: the first host listens where a launch would put the rendezvous and every
    host connects to it. Exit 0 only when no check found an error.
    """
    import os
    import sys

    from launcher.doctor.checks import run_doctor
    from launcher.hosts.sources import resolve_hosts
    from launcher.transport.agent import SshOptions

    hosts = resolve_hosts(options["hosts_arg"], os.environ)
    ssh = SshOptions(connect_timeout=options["connect_timeout"], python=options["python"] or sys.executable)
    cwd = options["cwd"] or os.getcwd()
    report = run(run_doctor(hosts, ssh, cwd, options["rdzv_port"]))
    speed = None
    if options["bandwidth"]:
        from launcher.doctor.bandwidth import run_bandwidth

        speed = run(run_bandwidth(hosts, report, ssh, cwd, options["bandwidth_seconds"], options["min_ratio"]))
    if options["write_hosts"]:
        write_hosts(options["write_hosts"], hosts, report, speed)
    if options["as_json"]:
        import json

        click.echo(json.dumps(doctor_json(report, speed), indent=2))
    else:
        print_doctor(report)
        if speed is not None:
            print_bandwidth(speed)
    ctx.exit(0 if report.ok and (speed is None or speed.ok) else 1)


def write_hosts(path: str, hosts: Sequence[Host], report: DoctorReport, speed: BandwidthReport | None) -> None:
    from launcher.doctor.passing import hosts_file_text, passed_hosts
    from launcher.errors import UsageError

    kept = passed_hosts(hosts, report, speed)
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.write(hosts_file_text(kept))
    except OSError as exc:
        raise UsageError(f"--write-hosts: cannot write {path}: {exc.strerror}") from None
    click.echo(f"wrote {len(kept)} of {len(hosts)} hosts (those that passed) to {path}", err=True)


def preflight(spec: LaunchSpec, exclude: bool) -> LaunchSpec:
    """``launch --preflight bandwidth``: the doctor's checks and bandwidth test first; the
    hosts that did not pass refuse the launch, or (``exclude``) are left out of it."""
    from dataclasses import replace

    from launcher.doctor.passing import choose_hosts, run_preflight

    ssh = replace(spec.ssh, python=spec.python)
    # With --sync the job's directory may not exist yet: that is no host's fault.
    found = run(run_preflight(spec.hosts, ssh, spec.cwd if spec.sync_dir is None else "/"))
    kept = choose_hosts(spec.hosts, found, exclude)
    for problem in found.failures():
        click.echo(f"preflight: {problem}; left out", err=True)
    speed = found.speed
    shown = f"bus bandwidth {human_rate(speed.bus_bandwidth)}" if speed.bus_bandwidth else "measured"
    click.echo(f"preflight: {len(kept)} of {len(spec.hosts)} hosts passed ({shown})", err=True)
    return replace(spec, hosts=kept)


def doctor_json(report: DoctorReport, speed: BandwidthReport | None = None) -> dict[str, Any]:
    from dataclasses import asdict

    hosts = [{**asdict(h), "level": h.level} for h in report.hosts]
    found: dict[str, Any] = {"ok": report.ok, "rendezvous": report.rendezvous, "hosts": hosts}
    if speed is not None:
        speed_hosts = [{**asdict(h), "level": h.level} for h in speed.hosts]
        found["bandwidth"] = {**asdict(speed), "ok": speed.ok, "passed": list(speed.passed), "hosts": speed_hosts}
        found["ok"] = report.ok and speed.ok
    return found


def print_bandwidth(speed: BandwidthReport, width: int | None = None) -> None:
    """One row per host (bandwidth, latency, result), the whole set's line, then what is wrong."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=width)
    table = Table(title="bandwidth, point to point", title_justify="left", box=None, padding=(0, 1, 0, 0))
    for column in ("host", "bandwidth", "latency", "result"):
        table.add_column(column, no_wrap=True)
    for host in speed.hosts:
        result = "error" if host.error else "slow" if host.slow else "ok"
        table.add_row(host.host, human_rate(host.bandwidth), _latency(host.latency_s), result)
    console.print(table)
    if speed.bus_bandwidth is not None and speed.allreduce:
        size = speed.allreduce[-1].bytes
        shown = f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"
        measured = sum(1 for h in speed.hosts if h.error is None)
        console.print(
            f"all-reduce, {measured} hosts, {speed.backend}, {shown}: bus bandwidth "
            f"{human_rate(speed.bus_bandwidth)}, latency {_latency(speed.latency_s)} ({speed.seconds:.1f}s)"
        )
    if speed.error:
        console.print(f"bandwidth: error: {speed.error}")
    for host in speed.hosts:
        if host.error:
            console.print(f"{host.host}: error: {host.error}")
        elif host.slow:
            console.print(f"{host.host}: slow: {human_rate(host.bandwidth)}, below the other hosts'")
    if speed.gpus:
        tflops = sorted(g.tflops for g in speed.gpus)
        console.print(f"GPUs: {len(tflops)}, bf16 matmul {tflops[0]:.0f} to {tflops[-1]:.0f} TFLOPS")
    for gpu in speed.gpus:
        if gpu.slow:
            console.print(f"{gpu.host}: slow: GPU {gpu.index} ({gpu.name}) {gpu.tflops:.0f} TFLOPS, below its peers")
    for a, b in speed.slow_links:
        console.print(f"{a} - {b}: slow link (each host is fast with another partner)")


def print_doctor(report: DoctorReport, width: int | None = None) -> None:
    """Readable at 80 columns: short cells, every finding that is not ok as a note below."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=width)
    where = report.rendezvous or "not reached by every host"
    table = Table(title=f"rendezvous: {where}", title_justify="left", box=None, padding=(0, 1, 0, 0))
    for column in ("host", "ssh", "clock", "python", "torch", "gpus", "disk", "network", "result"):
        table.add_column(column, no_wrap=column != "host", overflow="fold")
    for check in report.hosts:
        table.add_row(*row_cells(check))
    console.print(table)
    common = common_line(report.hosts)
    if common:
        console.print(common)
    for check in report.hosts:
        for finding in check.findings:
            if finding.level != "ok":
                console.print(f"{check.host}: {finding.level}: {finding.message}")


def row_cells(check: HostCheck) -> list[str]:
    from launcher.doctor.checks import human_bytes

    report = check.report
    if report is None:
        return [check.host, "-", "", "", "", "", "", "", check.level]
    network = {f.level for f in check.findings if f.check == "network"}
    interface = check.interface or "?"
    if "error" in network:
        interface = "blocked"
    frees = [d.free for d in report.disks if d.free is not None]
    return [
        check.host,
        _seconds(check.ssh_s),
        "" if check.clock_offset_s is None else f"{check.clock_offset_s:+.1f}s",
        report.python_version + ("" if check.node_side in (None, "installed") else f" {check.node_side}"),
        report.torch or "none",
        gpu_cell(report.gpus.count, report.gpus.models, report.gpus.free_mib),
        human_bytes(min(frees)) if frees else "?",
        interface,
        check.level,
    ]


def gpu_cell(count: int, models: Sequence[str], free_mib: Sequence[int]) -> str:
    """``none``, ``8 H100 79G`` (the least free memory of one GPU)."""
    if count == 0:
        return "none"
    model = models[0].removeprefix("NVIDIA ").split()[0] if len(models) == 1 else "mixed"
    free = f" {min(free_mib) / 1024:.0f}G" if free_mib else ""
    return f"{count} {model}{free}"


def common_line(hosts: Sequence[HostCheck]) -> str:
    """What every reachable host has alike, said once."""
    reports = [h.report for h in hosts if h.report is not None]
    if not reports:
        return ""
    parts = []
    for name, label in (("tmux", "tmux"), ("cuda", "CUDA"), ("nccl", "NCCL")):
        values = {getattr(r, name) for r in reports}
        if len(values) == 1:
            parts.append(f"{label} {values.pop() or 'none'}")
    return ("every host: " + ", ".join(parts)) if parts else ""


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def human_rate(rate: float | None) -> str:
    from launcher.doctor.bandwidth import human_rate

    return human_rate(rate)


def _latency(value: float | None) -> str:
    """``85us``, ``1.5ms``, ``12ms``."""
    if value is None:
        return "-"
    return f"{value * 1e6:.0f}us" if value < 1e-3 else f"{value * 1000:.1f}ms" if value < 0.01 else _seconds(value)
