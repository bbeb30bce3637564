"""The tables: one per measurement, rendered with rich for the terminal and as Markdown.

Ratios compare medians at the same host count: ``x floor`` to the asyncssh floor,
``x xargs`` to the sequential recipe (above 1: slower than it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.results import Results, Summary

LAUNCH_CONTENDERS = ("launcher", "xargs", "xargs -P 32", "pdsh", "floor", "torchrunx", "deepspeed")
FOREGROUND_NOTE = (
    " torchrunx and deepspeed stay in the foreground while the job runs: their time (and CPU) is until "
    "the job's own code runs on every host."
)
LAUNCH_TITLES = {
    "launch-light": "Launch, light job (--runner python, a sleeping script): seconds until the command returns",
    "launch-torchrun": "Launch, torchrun job (1 process per host, gloo): seconds until the command returns",
}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    section_ends: set[int] = field(default_factory=set)
    """Indexes of rows after which a rule is drawn (one section per host count)."""
    note: str = ""

    def end_section(self) -> None:
        if self.rows:
            self.section_ends.add(len(self.rows) - 1)


def all_tables(results: Results) -> list[Table]:
    tables = [launch_table(results, measure) for measure in LAUNCH_TITLES]
    tables += [control_table(results), ready_table(results), kill_table(results)]
    tables += [logs_table(results), startup_table(results)]
    return [t for t in tables if t.rows]


def launch_table(results: Results, measure: str) -> Table:
    table = Table(
        LAUNCH_TITLES[measure],
        ["hosts", "contender", "median s", "min-max s", "x floor", "x xargs", "CPU s/host", "node CPU s/host", "runs"],
        note=(
            "CPU s/host: the launching side's CPU (the command and every process it waited for) per host. "
            "node CPU s/host: what the hosts (sshd, shells, tmux, agents, the job) used by the time the "
            "command returned, per host; on this machine the hosts share its cores with the launching side."
        )
        + (FOREGROUND_NOTE if _present(results, measure, ("torchrunx", "deepspeed")) else ""),
    )
    for n in results.host_counts(measure):
        floor = results.summary(measure, "floor", n, "wall_s")
        recipe = results.summary(measure, "xargs", n, "wall_s")
        for contender in _present(results, measure, LAUNCH_CONTENDERS):
            wall = results.summary(measure, contender, n, "wall_s")
            cpu = results.summary(measure, contender, n, "cpu_per_host_s")
            node_cpu = results.summary(measure, contender, n, "node_cpu_per_host_s")
            table.rows.append(
                [
                    str(n),
                    contender,
                    seconds(wall),
                    spread(wall),
                    ratio(wall, floor),
                    ratio(wall, recipe),
                    "-" if cpu is None else f"{cpu.median:.3f}",
                    "-" if node_cpu is None else f"{node_cpu.median:.3f}",
                    runs(results, measure, contender, n, wall),
                ]
            )
        table.end_section()
    return table


CONTROL = (("status-light", "launcher status"), ("kill-light", "launcher kill"))


def control_table(results: Results) -> Table:
    grace = results.config.get("grace", 5)
    table = Table(
        f"Status and kill of a running light job (launcher status NAME, then launcher kill --grace {grace:g} NAME)",
        ["hosts", "command", "median s", "min-max s", "CPU s/host", "node CPU s/host", "x launch", "runs"],
        note=(
            "node CPU s/host: what the hosts used from just before the command until its SSH sessions had "
            "ended (for kill: and the job was gone), per host, as for a launch; x launch: that over the "
            "light launch's node CPU at the same host count. The job meanwhile sleeps; "
            "its hosts used {idle} CPU-s per host and second of doing nothing (median)."
        ),
    )
    idle = []
    for n in sorted(set(results.host_counts("status-light")) | set(results.host_counts("kill-light"))):
        launch = results.summary("launch-light", "launcher", n, "node_cpu_per_host_s")
        for measure, label in CONTROL:
            wall = results.summary(measure, "launcher", n, "wall_s")
            cpu = results.summary(measure, "launcher", n, "cpu_per_host_s")
            node_cpu = results.summary(measure, "launcher", n, "node_cpu_per_host_s")
            idle += results.values(measure, "launcher", n, "idle_node_cpu_per_host_s")
            table.rows.append(
                [
                    str(n),
                    label,
                    seconds(wall),
                    spread(wall),
                    _num(cpu, ".3f"),
                    _num(node_cpu, ".3f"),
                    ratio(node_cpu, launch),
                    runs(results, measure, "launcher", n, wall),
                ]
            )
        table.end_section()
    idle_median = Summary.of(idle)
    table.note = table.note.format(idle="?" if idle_median is None else f"{idle_median.median:.3f}")
    return table


def ready_table(results: Results) -> Table:
    table = Table(
        "Time to all ranks ready (examples/distributed_sum.py, 1 process per host, gloo): seconds from Enter",
        ["hosts", "contender", "median s", "min-max s", "x xargs", "x pdsh", "command returned s", "runs"],
    )
    if _present(results, "ready", ("torchrunx", "deepspeed")):
        table.note = "torchrunx and deepspeed return when the job has ended, not once it has started."
    for n in results.host_counts("ready"):
        recipe = results.summary("ready", "xargs", n, "ready_s")
        pdsh = results.summary("ready", "pdsh", n, "ready_s")
        for contender in _present(results, "ready", ("launcher", "xargs", "pdsh", "torchrunx", "deepspeed")):
            ready = results.summary("ready", contender, n, "ready_s")
            returned = results.summary("ready", contender, n, "returned_s")
            table.rows.append(
                [
                    str(n),
                    contender,
                    seconds(ready),
                    spread(ready),
                    ratio(ready, recipe),
                    ratio(ready, pdsh),
                    seconds(returned),
                    runs(results, "ready", contender, n, ready),
                ]
            )
        table.end_section()
    return table


def kill_table(results: Results) -> Table:
    grace = results.config.get("grace", "?")
    table = Table(
        f"Kill a running torchrun job whose ranks each left a setsid helper (launcher kill --grace {grace:g})",
        [
            "hosts",
            "contender",
            "returned s",
            "tree gone s",
            "all gone s",
            "x xargs",
            "left (hosts)",
            "node CPU s/host",
            "runs",
        ],
        note=(
            "tree gone: torchrun and its workers; all gone: the helpers too ('never': still there when we "
            "stopped looking); left: job processes found inside the hosts' PID namespaces "
            f"{results.config.get('left_after_s', 3):g} s after the job was gone or we stopped looking. "
            "x xargs compares 'tree gone'. node CPU s/host: what the hosts used from just before the kill "
            "until the job was gone (or we stopped looking) and its SSH sessions had ended, per host: the "
            "kill's own work and the job's processes shutting down."
        ),
    )
    if _present(results, "kill", ("torchrunx", "deepspeed")):
        table.note += (
            " torchrunx and deepspeed have no kill command: Ctrl-C (SIGINT to the command's process group) "
            "is theirs; returned: until the command exited."
        )
    for n in results.host_counts("kill"):
        recipe = results.summary("kill", "xargs", n, "tree_gone_s")
        for contender, label in _present_labels(results, "kill", KILL_LABELS):
            tree = results.summary("kill", contender, n, "tree_gone_s")
            gone = results.summary("kill", contender, n, "gone_s")
            good = len(results.values("kill", contender, n, "returned_s"))
            never = good - (gone.count if gone else 0)
            left = results.summary("kill", contender, n, "left")
            left_hosts = results.summary("kill", contender, n, "left_hosts")
            table.rows.append(
                [
                    str(n),
                    label,
                    seconds(results.summary("kill", contender, n, "returned_s")),
                    seconds(tree),
                    _all_gone(gone, never),
                    ratio(tree, recipe),
                    "-" if left is None else f"{left.high:g} ({0 if left_hosts is None else left_hosts.high:g})",
                    _num(results.summary("kill", contender, n, "node_cpu_per_host_s"), ".3f"),
                    runs(results, "kill", contender, n, results.summary("kill", contender, n, "returned_s")),
                ]
            )
        table.end_section()
    return table


KILL_LABELS = (
    ("launcher", "launcher kill"),
    ("xargs", "xargs ssh tmux kill-session"),
    ("torchrunx", "torchrunx, Ctrl-C"),
    ("deepspeed", "deepspeed, Ctrl-C"),
)


def _present(results: Results, measure: str, contenders: tuple[str, ...]) -> list[str]:
    """The contenders this run measured (an older run, or one without torchrunx, has fewer)."""
    measured = {s.contender for s in results.samples if s.measure == measure}
    return [c for c in contenders if c in measured]


def _present_labels(results: Results, measure: str, labels: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    measured = set(_present(results, measure, tuple(c for c, _ in labels)))
    return [(c, label) for c, label in labels if c in measured]


def logs_table(results: Results) -> Table:
    rate = results.config.get("log_rate", 100)
    table = Table(
        f"launcher logs --follow, every host printing {rate:g} lines/s: latency from print to follower output",
        ["hosts", "lines seen", "p50 s", "p95 s", "max s", "follower RSS MB", "follower CPU %"],
    )
    for n in results.host_counts("logs"):
        value = {key: results.summary("logs", "launcher", n, key) for key in _LOG_KEYS}
        if results.failures("logs", "launcher", n) and value["received"] is None:
            table.rows.append([str(n), "failed", "", "", "", "", ""])
            continue
        seen = f"{_num(value['received'])}/{_num(value['expected'])}"
        cpu = value["cpu_fraction"]
        table.rows.append(
            [
                str(n),
                seen,
                seconds(value["p50_s"]),
                seconds(value["p95_s"]),
                seconds(value["max_s"]),
                _num(value["rss_mb"], ".0f"),
                "-" if cpu is None else f"{100 * cpu.median:.0f}",
            ]
        )
    return table


def _all_gone(gone: Summary | None, never: int) -> str:
    if not never:
        return seconds(gone)
    return "never" if gone is None else f"{seconds(gone)} ({never} never)"


_LOG_KEYS = ("received", "expected", "p50_s", "p95_s", "max_s", "rss_mb", "cpu_fraction")


def startup_table(results: Results) -> Table:
    table = Table(
        "Start-up on the launching machine",
        ["command", "median s", "min-max s", "x python", "peak RSS MB", "runs"],
    )
    names = list(dict.fromkeys(s.contender for s in results.samples if s.measure == "startup"))
    python = results.summary("startup", "python -c pass", 0, "wall_s")
    for name in names:
        wall = results.summary("startup", name, 0, "wall_s")
        rss = results.summary("startup", name, 0, "max_rss_mb")
        table.rows.append(
            [name, seconds(wall, 3), spread(wall, 3), ratio(wall, python), _num(rss, ".0f"), _count(wall)]
        )
    return table


# ---------------------------------------------------------------------------- cells


def seconds(value: Summary | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value.median:.{digits}f}"


def spread(value: Summary | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value.low:.{digits}f}-{value.high:.{digits}f}"


def ratio(value: Summary | None, base: Summary | None) -> str:
    if value is None or base is None or base.median <= 0:
        return "-"
    return f"{value.median / base.median:.2f}x"


def runs(results: Results, measure: str, contender: str, n: int, value: Summary | None) -> str:
    """Good runs, and how many of all the runs failed (from 64 hosts on, some may)."""
    failed = results.failures(measure, contender, n)
    good = value.count if value else 0
    return str(good) + (f" ({failed} of {good + failed} failed)" if failed else "")


def _count(value: Summary | None) -> str:
    return str(value.count if value else 0)


def _num(value: Summary | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value.median, spec)
