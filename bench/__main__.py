"""``python -m bench``: measure, print one table per measurement, save JSON, rewrite the docs.

Exit status 0 when every run worked (whatever the targets say), 1 when any failed, 2 on
bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from bench.config import MAX_HOSTS, MEASURES, Plan
from bench.procs import REPO
from bench.results import Results

DOCS = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "launch_time.png"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--max-hosts", type=int, default=32, metavar="N", help=f"largest cluster, 1 to {MAX_HOSTS} (default 32)"
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        metavar="N,N,...",
        help="exactly these cluster sizes (instead of 1, 2, 4, ... up to --max-hosts)",
    )
    parser.add_argument(
        "--only",
        type=_measures,
        default=MEASURES,
        metavar="M,M,...",
        help=f"only these measurements, of {', '.join(MEASURES)} (start-up always runs)",
    )
    parser.add_argument("--repeat", type=int, default=5, metavar="R", help="repetitions of each launch (default 5)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 hosts, one repetition (< 3 min; ~4 with torchrunx and deepspeed)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results", metavar="DIR", help="raw numbers (JSON)"
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md and the plot alone")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="measure nothing: report a saved run")
    args = parser.parse_args(argv)
    largest = max(args.sizes or [args.max_hosts])
    if not 1 <= args.max_hosts <= MAX_HOSTS or args.repeat < 1:
        parser.error(f"--max-hosts must be 1 to {MAX_HOSTS} and --repeat at least 1")
    if not args.from_json and largest > (cluster_max := _cluster_max_hosts()):
        parser.error(f"tests/cluster.py builds clusters of at most {cluster_max} hosts, not {largest}")
    return args


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of host counts: {text!r}") from None
    if not all(1 <= n <= MAX_HOSTS for n in sizes):
        raise argparse.ArgumentTypeError(f"host counts are 1 to {MAX_HOSTS}: {text!r}")
    return sizes


def _measures(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [m for m in chosen if m not in MEASURES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"measurements are {', '.join(MEASURES)}; not {', '.join(unknown)}")
    return tuple(m for m in MEASURES if m in chosen)


def _cluster_max_hosts() -> int:
    """What the test cluster allows (another limit than ours: its veth names, its subnet)."""
    from bench.procs import REPO

    sys.path.insert(0, str(REPO / "tests"))
    import cluster

    return int(cluster.MAX_HOSTS)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # a CI log or a file: do not squeeze the tables into 80 columns
        console = Console(width=160)
    if args.from_json:
        results = Results.load(args.from_json)
    else:
        if os.geteuid() != 0:
            console.print("python -m bench needs root: the test cluster uses network namespaces")
            return 2
        # SIGTERM ends the run like Ctrl-C: the clusters are closed on the way out, which
        # ends everything the run started on their hosts.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            results = _measure(args, console)
        except KeyboardInterrupt:
            console.print("interrupted: every cluster of this run is closed; raw numbers so far are in --out")
            return 130
    _report(results, console, docs=not args.no_docs)
    failed = sum(1 for s in results.samples if s.error)
    if failed:
        # A missed target is a finding; a run that failed is one too, but it also means
        # a number is missing: the smoke test in CI must notice.
        console.print(Text(f"{failed} run(s) failed (see the notes above)", style="red"))
        return 1
    return 0


def _measure(args: argparse.Namespace, console: Console) -> Results:
    from bench.runner import run_benchmark

    def progress(line: str) -> None:
        console.print(Text(line, style="red" if "FAILED" in line else ""))

    plan = Plan.make(args.max_hosts, args.repeat, args.quick, args.sizes, args.only)
    save_to = args.out / ("quick.json" if args.quick else "full.json")
    results = run_benchmark(plan, save_to, progress)
    console.print(f"raw numbers: {save_to}")
    return results


def _report(results: Results, console: Console, docs: bool) -> None:
    from bench.render import print_tables
    from bench.report import all_tables
    from bench.targets import check_targets

    console.print()
    print_tables(console, all_tables(results), check_targets(results))
    for note in results.notes:
        console.print(Text(f"note: {note}"))
    if docs:
        from bench.docs import write_docs
        from bench.plot import plot_launch

        drawn = plot_launch(results, PLOT)
        write_docs(results, DOCS, PLOT.name if drawn else None)
        console.print(f"wrote {DOCS.relative_to(REPO)}" + (f" and {PLOT.relative_to(REPO)}" if drawn else ""))


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
