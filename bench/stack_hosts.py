"""Issue 20's measurement: ``launcher stack`` on the test cluster at 3 and 16 hosts.

    python -m bench.stack_hosts [--sizes 3,16] [--nproc 2] [--method auto]

Per size: a job of ``tests/scripts/stuck_rank.py`` (the last rank stuck in its own function,
the others in an all-reduce); once every rank has joined, ``launcher stack`` is run three
times and its wall time noted (the first and the median). The hosts are network namespaces
sharing this machine's cores. Prints the roll-call of the first size, as the README shows it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import REPO

sys.path.insert(0, str(REPO / "tests"))
from cluster import start_cluster  # after the path above
from launcher_cli import job_name, run_cli, wait_for


def measure(size: int, nproc: int, method: str, show: bool) -> dict[str, object]:
    with start_cluster(size, Path(tempfile.mkdtemp(prefix="stack-bench-"))) as cluster:
        hosts = cluster.write_hosts_file([h.name for h in cluster.hosts], name="stack")
        name = job_name("stack-bench")
        ranks = size * nproc
        script = ["-e", f"STUCK_RANK={ranks - 1}", "tests/scripts/stuck_rank.py"]
        launched = run_cli(
            cluster, "launch", "--hosts", str(hosts), "--name", name, "--nproc-per-node", str(nproc), *script
        )
        if launched.returncode != 0:
            raise SystemExit(launched.stderr)
        try:
            wait_for(
                "every rank joined", lambda: run_cli(cluster, "logs", name).stdout.count("joined") == ranks, 600, 2
            )
            times = []
            for _ in range(3):
                began = time.monotonic()
                taken = run_cli(cluster, "stack", name, "--method", method)
                times.append(time.monotonic() - began)
            if show:
                print(f"$ launcher stack {name}\n{taken.stdout}", flush=True)
        finally:
            run_cli(cluster, "kill", "--grace", "0", name)
    return {
        "hosts": size,
        "ranks": ranks,
        "first_s": round(times[0], 2),
        "median_s": round(statistics.median(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stack_hosts")
    parser.add_argument("--sizes", default="3,16")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--method", default="auto", choices=["auto", "py-spy", "faulthandler"])
    args = parser.parse_args()
    rows = [measure(int(n), args.nproc, args.method, show=i == 0) for i, n in enumerate(args.sizes.split(","))]
    print("| hosts | ranks | first `stack` (s) | median of 3 (s) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['hosts']} | {row['ranks']} | {row['first_s']} | {row['median_s']} |")


if __name__ == "__main__":
    main()
