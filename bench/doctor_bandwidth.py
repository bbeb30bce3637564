"""Issue 22's measurement: ``launcher doctor --bandwidth`` on the test cluster at 4 and 16
hosts, one host's link throttled (a token bucket both ways, ``TestHost.throttle``):

    python -m bench.doctor_bandwidth [--sizes 4,16] [--rate 20mbit|none] [--seconds 60] [--json FILE]

Per size: the doctor's wall time (checks + test), the test's own duration, the bus
bandwidth of the whole set, the median and slowest hosts' point-to-point bandwidth, and
which hosts were named slow. The hosts are namespaces sharing this machine's cores:
the figures are gloo over veth on a loaded machine, not a NIC's. Also prints the table of
the first size, as the README shows it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import REPO

sys.path.insert(0, str(REPO / "tests"))
from cluster import start_cluster  # after the path above
from launcher_cli import run_cli

from launcher.doctor.bandwidth import human_rate


def measure(size: int, rate: str, seconds: float, table: bool) -> dict[str, object]:
    with start_cluster(size, Path(tempfile.mkdtemp(prefix="doctor-bw-"))) as cluster:
        hosts = cluster.write_hosts_file([h.name for h in cluster.hosts], name="bandwidth")
        slow = cluster.hosts[min(2, size - 1)]
        if rate != "none":  # --rate none: a healthy set, for the test's own duration
            slow.throttle(rate)
        argv = ["doctor", "--hosts", str(hosts), "--bandwidth", "--bandwidth-seconds", f"{seconds:g}"]
        began = time.monotonic()
        result = run_cli(cluster, *argv, "--json", timeout=seconds + 120, NO_COLOR="1")
        wall = time.monotonic() - began
        if table:
            shown = run_cli(cluster, *argv, timeout=seconds + 120, NO_COLOR="1", COLUMNS="80")
            print(shown.stdout, flush=True)
    speed = json.loads(result.stdout)["bandwidth"]
    figures = {h["host"]: h["bandwidth"] for h in speed["hosts"] if h["bandwidth"]}
    healthy = [bw for host, bw in figures.items() if host != slow.name]
    return {
        "hosts": size,
        "throttled": f"{slow.name} at {rate}",
        "doctor_s": round(wall, 1),
        "test_s": round(speed["seconds"], 1),
        "bus_bandwidth": speed["bus_bandwidth"],
        "median_healthy": statistics.median(healthy) if healthy else None,
        "slowest_healthy": min(healthy) if healthy else None,
        "throttled_host": figures.get(slow.name),
        "named_slow": [h["host"] for h in speed["hosts"] if h["slow"]],
        "error": speed["error"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.doctor_bandwidth")
    parser.add_argument("--sizes", default="4,16")
    parser.add_argument("--rate", default="20mbit")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    rows = [measure(int(n), args.rate, args.seconds, table=i == 0) for i, n in enumerate(args.sizes.split(","))]
    print(
        "| hosts | throttled | doctor (s) | test (s) | bus bandwidth | median host | slowest healthy | throttled host | named slow |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        rates = [human_rate(row[k]) for k in ("bus_bandwidth", "median_healthy", "slowest_healthy", "throttled_host")]  # type: ignore[arg-type]
        named = ", ".join(row["named_slow"]) or "none"  # type: ignore[arg-type]
        print(
            f"| {row['hosts']} | {row['throttled']} | {row['doctor_s']} | {row['test_s']} | {' | '.join(rates)} | {named} |"
        )
        if row["error"]:
            print(f"  error: {row['error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
