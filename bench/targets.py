"""The issue's targets, checked against the medians of a run.

A target set at 32 hosts is judged only when 32 hosts were measured; a smaller run shows
its largest host count for information, unjudged.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import Results

AT_HOSTS = 32


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None
    """``None``: not measured in this run."""


def check_targets(results: Results) -> list[Verdict]:
    return [
        *_launch_light(results),
        _launch_torchrun(results),
        _ready(results),
        *_kill(results),
        *_logs(results),
        _help(results),
    ]


def _median(results: Results, measure: str, contender: str, n: int, key: str) -> float | None:
    summary = results.summary(measure, contender, n, key)
    return None if summary is None else summary.median


def _ratios(results: Results, measure: str, key: str, base: str, counts: list[int]) -> dict[int, float]:
    """Launcher's median over ``base``'s, per host count."""
    found = {}
    for n in counts:
        mine, theirs = _median(results, measure, "launcher", n, key), _median(results, measure, base, n, key)
        if mine is not None and theirs:
            found[n] = mine / theirs
    return found


def _at_most(target: str, ratios: dict[int, float], limit: float, failed: str = "") -> Verdict:
    """Met when every ratio is within ``limit`` and no launcher run failed."""
    if not ratios and not failed:
        return Verdict(target, "not measured", None)
    measured = failed
    if ratios:
        worst = max(ratios, key=lambda n: ratios[n])
        listed = ", ".join(f"{n}: {r:.2f}x" for n, r in sorted(ratios.items()))
        measured = f"worst {ratios[worst]:.2f}x at {worst} hosts ({listed})" + (f"; {failed}" if failed else "")
    return Verdict(target, measured, not failed and all(r <= limit for r in ratios.values()))


def _launcher_failures(results: Results, measure: str) -> str:
    """``launcher failed 1 of 1 run(s) at 32 hosts``, or empty."""
    parts = []
    for n in results.host_counts(measure):
        failed = results.failures(measure, "launcher", n)
        if failed:
            runs = failed + len(results.values(measure, "launcher", n, _MAIN_KEY[measure]))
            parts.append(f"{failed} of {runs} run(s) at {n} hosts")
    return "launcher failed " + ", ".join(parts) if parts else ""


_MAIN_KEY = {"launch-light": "wall_s", "launch-torchrun": "wall_s", "ready": "ready_s"}


def _at_top(target: str, top: int, measured: str | None, met: bool, why_not: str = "") -> Verdict:
    """A target set at ``AT_HOSTS`` hosts, measured at ``top`` (the run's largest count)."""
    if measured is None:
        return Verdict(target, why_not or "not measured", None)
    if top != AT_HOSTS:
        return Verdict(target, f"{measured} at {top} hosts (not judged: {AT_HOSTS} not measured)", None)
    return Verdict(target, measured, met)


def _failed_at(results: Results, measure: str, n: int) -> str:
    """Why the launcher has no good run of ``measure`` at ``n`` hosts, if it has failed ones."""
    failed = results.failures(measure, "launcher", n)
    return f"no good run at {n} hosts: the launcher failed {failed} of {failed} (see notes)" if failed else ""


def _launch_light(results: Results) -> list[Verdict]:
    m = "launch-light"
    counts = [n for n in results.host_counts(m) if n >= 4]
    top = max(results.host_counts(m), default=0)
    launcher, recipe = _median(results, m, "launcher", top, "wall_s"), _median(results, m, "xargs", top, "wall_s")
    speedup = recipe / launcher if launcher and recipe else None
    return [
        _at_most(
            "launch, light job: <= 1.5x the asyncssh floor at every N >= 4",
            _ratios(results, m, "wall_s", "floor", counts),
            1.5,
            _launcher_failures(results, m),
        ),
        _at_most(
            "launch, light job: no slower than pdsh at every N >= 4",
            _ratios(results, m, "wall_s", "pdsh", counts),
            1.0,
            _launcher_failures(results, m),
        ),
        _at_top(
            f"launch, light job: >= 3x faster than the sequential recipe at {AT_HOSTS} hosts",
            top,
            None if speedup is None else f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower",
            speedup is not None and speedup >= 3,
        ),
        _at_most(
            "launching machine's CPU per host <= 1.2x the floor's (light job, N >= 4)",
            _ratios(results, m, "cpu_per_host_s", "floor", counts),
            1.2,
        ),
    ]


def _launch_torchrun(results: Results) -> Verdict:
    m = "launch-torchrun"
    ratios = _ratios(results, m, "wall_s", "pdsh", results.host_counts(m))
    return _at_most("launch, torchrun job: no slower than pdsh at any N", ratios, 1.0, _launcher_failures(results, m))


def _ready(results: Results) -> Verdict:
    ratios = _ratios(results, "ready", "ready_s", "pdsh", results.host_counts("ready"))
    failed = _launcher_failures(results, "ready")
    return _at_most("all ranks ready: no slower than pdsh-started torchrun at any N", ratios, 1.0, failed)


def _kill(results: Results) -> list[Verdict]:
    top = max(results.host_counts("kill"), default=0)
    why_not = _failed_at(results, "kill", top)
    grace = float(results.config.get("grace", 0))
    runs = len(results.values("kill", "launcher", top, "returned_s"))
    gone = results.values("kill", "launcher", top, "gone_s")
    left = results.values("kill", "launcher", top, "left")
    slowest = None
    if runs:
        slowest = f"slowest {max(gone):.2f} s" if len(gone) == runs else f"{runs - len(gone)} of {runs} run(s) never"
    return [
        _at_top(
            f"kill: all gone < grace + 2 s at {AT_HOSTS} hosts (grace {grace:g} s)",
            top,
            slowest,
            len(gone) == runs and max(gone, default=0) < grace + 2,
            why_not,
        ),
        _at_top(
            f"kill: 0 processes left at {AT_HOSTS} hosts",
            top,
            None if not left else f"{max(left):g} left at most",
            bool(left) and max(left) == 0,
            why_not,
        ),
    ]


def _logs(results: Results) -> list[Verdict]:
    counts = results.host_counts("logs")
    p50 = {n: v for n in counts if (v := _median(results, "logs", "launcher", n, "p50_s")) is not None}
    top = max(counts, default=0)
    rss = _median(results, "logs", "launcher", top, "rss_mb")
    return [
        Verdict(
            "logs: p50 latency < 0.5 s",
            ", ".join(f"{n}: {v:.3f} s" for n, v in p50.items()) or "not measured",
            None if not p50 else all(v < 0.5 for v in p50.values()),
        ),
        _at_top(
            f"logs: follower RSS < 100 MB at {AT_HOSTS} hosts",
            top,
            None if rss is None else f"{rss:.0f} MB",
            rss is not None and rss < 100,
            _failed_at(results, "logs", top),
        ),
    ]


def _help(results: Results) -> Verdict:
    wall = _median(results, "startup", "launcher --help", 0, "wall_s")
    measured = "not measured" if wall is None else f"{wall:.3f} s"
    return Verdict("launcher --help < 0.3 s", measured, None if wall is None else wall < 0.3)
