"""How the CLI shows things: status tables, the first failure, log lines, dry runs, progress.

Rich is imported where it draws, so that commands that print nothing pay nothing for it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from launcher.job.logs import LogLine
    from launcher.job.records import JobRecord
    from launcher.job.status import JobStatus
    from launcher.job.watcher import Recovery


def print_dry_run(name: str, plans: list[Any], cwd: str) -> None:
    from launcher.launching.environment import masked

    click.echo(f"# dry run of {name}: nothing is started. PORT is picked free on the first host at launch;")
    click.echo("# HOSTNAME is each node's hostname; GPUS its number of GPUs (else 1) and IFNAME the interface")
    click.echo("# it reaches the first host over, both chosen at launch. Each command runs in the job's tmux")
    click.echo(f"# session on its host, in {shell_quote(cwd)}:")
    for index, plan in enumerate(plans):
        env = [f"{k}={v}" for k, v in sorted(masked(plan.env).items())]
        click.echo(f"\n# {plan.host.label} (node {index})")
        click.echo(" ".join(shell_quote(word) for word in ["env", *env, *plan.argv]))


def shell_quote(word: str) -> str:
    """Quote for a POSIX shell; invisible characters as bash's $'\\x1e' so the line stays exact."""
    import shlex

    if word.isprintable():
        return shlex.quote(word)
    # \xHH stands for one byte in $'...': a character outside ASCII needs its UTF-8 bytes.
    escaped = "".join(
        c if c.isprintable() and c not in "\\'" else "".join(f"\\x{b:02x}" for b in c.encode()) for c in word
    )
    return f"$'{escaped}'"


def waiting_note(pending: Sequence[str], total: int, shown: int = 3) -> str:
    """The slowest hosts, by name, once most are done: ``waiting for h7, h9 (+3)``."""
    if not pending or len(pending) > max(total // 4, shown):
        return ""
    more = f" (+{len(pending) - shown})" if len(pending) > shown else ""
    return "waiting for " + ", ".join(pending[:shown]) + more


class LaunchProgress:
    """A progress line over hosts on a terminal; nothing on a pipe or with NO_COLOR."""

    def __init__(self, hosts: int, labels: Sequence[str] = ()) -> None:
        import os

        self._hosts = hosts
        self._live = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        self._progress: Any = None
        self._pending = {"connected": dict.fromkeys(labels), "started": dict.fromkeys(labels)}
        """Per phase, the hosts not there yet, in hosts-file order (a dict keeps it)."""

    def __enter__(self) -> LaunchProgress:
        if self._live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[waiting]}"),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._connect = self._progress.add_task("connecting", total=self._hosts, waiting="")
            self._start = self._progress.add_task("starting  ", total=self._hosts, waiting="")
        return self

    def update(self, host: str, event: str) -> None:
        if event.startswith("note: "):  # a host's word on its GPUs: shown, whatever the terminal
            line = f"{host}: {event.removeprefix('note: ')}"
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=sys.stderr, flush=True)
            return
        pending = self._pending.get(event, {})
        pending.pop(host, None)
        if self._progress is not None:
            task = self._connect if event == "connected" else self._start
            self._progress.update(task, advance=1, waiting=waiting_note(list(pending), self._hosts))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class LinePrinter:
    """``[host rank R] text``, one colour per host on a terminal; ``\\r`` splits a line."""

    _COLOURS = ("36", "33", "35", "32", "34", "91", "96", "93", "95", "92")

    def __init__(self, ranks: set[int], stderr_only: bool, no_prefix: bool) -> None:
        import os

        self._ranks = ranks
        self._stderr_only = stderr_only
        self._no_prefix = no_prefix
        self._colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        self._host_colours: dict[str, str] = {}
        self.attempt: int | None = None
        """Set while following a job launched with --restarts: lines read ``[a2 host rank R]``."""

    def __call__(self, line: LogLine) -> None:
        if (self._ranks and line.rank not in self._ranks) or (self._stderr_only and line.stream != "e"):
            return
        label = ""
        if not self._no_prefix:
            where = line.host if self.attempt is None else f"a{self.attempt} {line.host}"
            label = f"[{where}]" if line.rank is None else f"[{where} rank {line.rank}]"
            if self._colour:
                colour = self._host_colours.setdefault(
                    line.host, self._COLOURS[len(self._host_colours) % len(self._COLOURS)]
                )
                label = f"\x1b[{colour}m{label}\x1b[0m"
            label += " "
        # A progress bar redraws itself with \r: every frame becomes a line of its own.
        for frame in line.text.split("\r"):
            if frame or "\r" not in line.text:
                sys.stdout.write(f"{label}{frame}\n")


def status_json(result: JobStatus) -> dict[str, Any]:
    """``{"name", "state", "hosts": [{"host", "state", "exit_code", ...}], "root_cause"}``."""
    from dataclasses import asdict

    hosts = []
    for h in result.hosts:
        host = asdict(h)
        host["ranks"] = [asdict(r) for r in h.ranks]
        if host["error"] is None:
            del host["error"]
        hosts.append(host)
    root = asdict(result.root_cause) if result.root_cause else None
    return {"name": result.name, "state": result.state, "hosts": hosts, "root_cause": root}


def print_status(result: JobStatus) -> None:
    """One row per host, readable at 80 columns: long notes go below the table, and a
    column that would only say 0 (restarts) is left out."""
    import time

    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    restarts = any(h.restarts for h in result.hosts)
    table = Table(title=f"{result.name}: {result.state}", title_justify="left", box=None, padding=(0, 2, 0, 0))
    table.add_column("host", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("exit", no_wrap=True)
    # Wrapped at spaces, never inside a cell such as "0-7:ended": as wide as the widest cell.
    widest = max((len(cell) for h in result.hosts for cell in rank_cells(h.ranks).split()), default=5)
    table.add_column("ranks", overflow="fold", ratio=1, min_width=max(widest, 5))
    if restarts:
        table.add_column("restarts", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("took", no_wrap=True)
    notes = []
    for h in result.hosts:
        started = time.strftime("%H:%M:%S", time.localtime(h.started_at)) if h.started_at else ""
        duration = _duration((h.ended_at or h.last_heard or time.time()) - h.started_at) if h.started_at else ""
        ranks = rank_cells(h.ranks)
        exit_code = "" if h.exit_code is None else str(h.exit_code)
        row = [h.host, h.state, exit_code, ranks, *([str(h.restarts)] if restarts else []), started, duration]
        table.add_row(*row)
        if h.error:
            notes.append(f"{h.host}: {h.error}")
    console.print(table)
    interfaces = [f"{h.host} {h.interface}" for h in result.hosts if h.interface]
    if interfaces:
        notes.insert(0, f"interfaces (NCCL, gloo): {', '.join(interfaces)}")
    for note in notes:
        console.print(note, soft_wrap=True)
    if result.root_cause is not None:
        print_root_cause(console, result.root_cause)


def print_jobs(records: list[JobRecord]) -> None:
    """``launcher list``: job, when, last known state, hosts (folded at commas, never mid-word)."""
    import time

    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, padding=(0, 2, 0, 0))
    table.add_column("job", no_wrap=True)
    table.add_column("launched", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("hosts", overflow="fold", ratio=1)
    for record in records:
        when = time.strftime("%m-%d %H:%M", time.localtime(record.launched_at))
        hosts = ", ".join(h.label for h in record.hosts)
        table.add_row(record.name, when, record.last_state or "launched", hosts)
    Console(highlight=False).print(table)


def rank_cells(ranks: Any) -> str:
    """``0-7 8:SIGKILL 9-15:ended``: consecutive ranks that ended alike as one range."""
    cells: list[str] = []
    start = previous = None
    how = ""
    for rank in [*ranks, None]:
        this = _rank_how(rank) if rank is not None else None
        if rank is not None and previous is not None and rank.rank == previous + 1 and this == how:
            previous = rank.rank
            continue
        if start is not None:
            span = str(start) if start == previous else f"{start}-{previous}"
            cells.append(span + (f":{how}" if how else ""))
        if rank is not None:
            start = previous = rank.rank
            how = this or ""
    return " ".join(cells)


def _rank_how(rank: Any) -> str:
    if rank.state == "failed":
        return str(rank.signal or f"exit {rank.exit_code}")
    return "" if rank.state in ("running", "succeeded") else str(rank.state)


def print_root_cause(console: Any, cause: Any) -> None:
    from rich.markup import escape

    if getattr(cause, "lost", False):  # "h2 lost: no heartbeat since 20:02:17"
        console.print(f"[bold red]First failure[/]: {escape(cause.exception)}", soft_wrap=True)
        return
    where = cause.host if cause.rank is None else f"{cause.host}, rank {cause.rank}"
    how = f"exit code {cause.exit_code}"
    if cause.signal:
        how = f"signal {cause.signal}" if cause.signal.startswith("SIG") else cause.signal
    console.print(f"[bold red]First failure[/]: {escape(where)} ({how}): {escape(cause.exception)}")
    for line in cause.traceback:
        console.print(f"  {escape(line)}", soft_wrap=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def recovery_lines(recovery: Recovery) -> list[str]:
    """``status`` of a job launched with ``--restarts``: the attempt, who watches, what is out."""
    if recovery.watched or recovery.finished:
        doing = recovery.doing or "watching"
    else:
        doing = "no longer watched: its watcher is gone (this machine rebooted?); the attempt runs on without it"
    lines = [f"Recovery: attempt {recovery.attempt} of {recovery.most}; {doing}"]
    lines += [f"  {host} left out: {why}" for host, why in recovery.left_out.items()]
    if recovery.spares_in_use:
        lines.append(f"  spares in use: {', '.join(recovery.spares_in_use)}")
    if recovery.spares_left:
        lines.append(f"  spares left: {', '.join(recovery.spares_left)}")
    for attempt in recovery.attempts[:-1] if recovery.attempts else ():
        lines.append(f"  attempt {attempt.number} on {', '.join(attempt.hosts)}: {attempt.state}: {attempt.cause}")
    return lines
