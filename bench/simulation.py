"""``python -m bench.simulation --hosts 250,500,1000``: the launching side at N simulated hosts.

The hosts are ``tests/sim_hosts.py``'s: asyncssh servers in a helper process, one port and
host key per host (checked against known_hosts), each answering as a node agent without
running anything. Each size runs in a fresh process (so that its peak RSS is its own),
which launches ``--runner exec sleep 600`` through ``launch_job``, asks its status and kills
it (``tests/sim_launch.py``). Only that process is measured: the servers' CPU is the helper's.

Columns: wall seconds to every host prepared (connect, handshake, agent greeting, prepare),
to every host started (held), to the launch's return (commit, connections closed); the
launch's CPU seconds (user + system, ``getrusage``) and per 100 hosts; then status and
kill, each on fresh connections; resident memory before the launch and at peak (MB), and
the most open files. The issue's targets: 1,000 hosts under 2 GB and under 1 CPU-second
per 100 hosts. No assertion; the machine's other users make the times noisy.

``--known-hosts-once`` is a what-if: asyncssh reads and parses known_hosts (every key in
it) at each connection, so with a line per host a launch's CPU grows with hosts squared;
the option makes it read each file once per process, to show what that change would save.
``--aliases`` names the hosts ``simN``, each with its own ``Host`` block in ~/.ssh/config
(which asyncssh parses at each connection too); by default they are ``127.0.0.1:PORT``
with an empty config.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.procs import REPO

sys.path.insert(0, str(REPO / "tests"))
from sim_hosts import SimulatedHosts  # after the path above
from sim_launch import measure_launch, with_home

COLUMNS = (
    ("hosts", "hosts", "{:d}"),
    ("max_parallel", "max par", "{:d}"),
    ("prepared", "prepared s", "{:.1f}"),
    ("started", "started s", "{:.1f}"),
    ("committed", "committed s", "{:.1f}"),
    ("launch_cpu", "launch CPU s", "{:.1f}"),
    ("cpu_per_100", "CPU s/100 hosts", "{:.2f}"),
    ("status_wall", "status s", "{:.1f}"),
    ("status_cpu", "status CPU s", "{:.1f}"),
    ("kill_wall", "kill s", "{:.1f}"),
    ("kill_cpu", "kill CPU s", "{:.1f}"),
    ("rss_before", "RSS before MB", "{:.0f}"),
    ("rss_peak", "peak RSS MB", "{:.0f}"),
    ("fds_peak", "peak fds", "{:d}"),
)


def read_known_hosts_once() -> None:
    """asyncssh's known_hosts files read once per process, not at every connection (a what-if:
    the files do not change during a run)."""
    from launcher.transport.ssh_library import asyncssh_module

    asyncssh_module()
    import asyncssh.known_hosts as known_hosts

    read = functools.cache(known_hosts.read_known_hosts)

    def once(filelist: str | Sequence[str]) -> Any:
        return read(filelist if isinstance(filelist, str) else tuple(filelist))

    known_hosts.read_known_hosts = once


def one_size(hosts: int, max_parallel: int, aliases: bool) -> dict[str, float]:
    """Run in this process: servers up, then the launching side measured."""
    home = Path(tempfile.mkdtemp(prefix="bench-sim-"))
    undo = with_home(home)
    try:
        with SimulatedHosts(hosts, home, aliases) as sim:
            measured = asyncio.run(measure_launch(sim.hosts, max_parallel, name=f"sim-{hosts}"))
            seen = sim.stats()
    finally:
        undo()
        shutil.rmtree(home, ignore_errors=True)
    if measured.killed != hosts or measured.status_states.get("running") != hosts:
        raise SystemExit(f"the simulation failed: {asdict(measured)}")
    phases = {p.name: p for p in measured.phases}
    launch = [phases["connect+prepare"], phases["start"], phases["commit+close"]]
    prepared = launch[0].wall
    started = prepared + launch[1].wall
    cpu = sum(p.cpu for p in launch)
    return {
        "hosts": hosts,
        "max_parallel": max_parallel,
        "prepared": prepared,
        "started": started,
        "committed": started + launch[2].wall,
        "launch_cpu": cpu,
        "cpu_per_100": cpu / hosts * 100,
        "status_wall": phases["status"].wall,
        "status_cpu": phases["status"].cpu,
        "kill_wall": phases["kill"].wall,
        "kill_cpu": phases["kill"].cpu,
        "rss_before": measured.rss_before_mb,
        "rss_peak": measured.peak_rss_mb,
        "fds_peak": measured.peak_fds,
        "most_handshaking": seen["most_handshaking"],
    }


def table(rows: list[dict[str, float]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(form.format(row[key]) for key, _, form in COLUMNS) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(word) for word in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be 1 or more: {text!r}")
    return sizes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.simulation", description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=_sizes, default=[250, 500, 1000], metavar="N,N,...")
    parser.add_argument("--max-parallel", type=int, default=128, metavar="N", help="as launch --max-parallel")
    parser.add_argument("--known-hosts-once", action="store_true", help="what-if: asyncssh reads known_hosts once")
    parser.add_argument("--aliases", action="store_true", help="hosts named simN, one ~/.ssh/config block each")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the rows there")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one size, JSON out
    args = parser.parse_args(argv)
    if args.max_parallel < 1:
        parser.error("--max-parallel must be 1 or more")
    if args.one:
        if args.known_hosts_once:
            read_known_hosts_once()
        print(json.dumps(one_size(args.hosts[0], args.max_parallel, args.aliases)))
        return 0
    rows = []
    for hosts in args.hosts:
        child = [sys.executable, "-m", "bench.simulation", "--one", "--hosts", str(hosts)]
        child += ["--known-hosts-once"] if args.known_hosts_once else []
        child += ["--aliases"] if args.aliases else []
        done = subprocess.run(
            [*child, "--max-parallel", str(args.max_parallel)], cwd=REPO, capture_output=True, text=True
        )
        if done.returncode != 0:
            lines = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()
            print(f"Error: {hosts} hosts: {lines[-1]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else table(rows), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
