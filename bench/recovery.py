"""``python -m bench.recovery``: how long from a host's death to the next attempt running.

For each size N: a cluster of N hosts and one spare; ``launcher launch --restarts 1 --spares
<spare> --runner exec sleep`` on the N; one host (not the first) is crashed (``TestHost.crash``:
link down, every process SIGKILLed); then, from the crash:

- *lost*: the watcher saw the attempt end (the survivors' heartbeat limit, teardown, status);
- *relaunched*: the next attempt was committed on every host (``attempts[1].started_at``);
- *running*: its command runs on every host, the spare included (seen in their process tables).

A table per run; no assertion. The command is ``sleep`` (no torch): what is measured is the
launcher's part. A torch job adds torchrun's start and its rendezvous on top.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import REPO

sys.path.insert(0, str(REPO / "tests"))
from cluster import Cluster, TestHost, start_cluster  # after the path above

POLL_S = 0.05
SETTLE_S = 2.0
"""From the command running everywhere to the crash: the supervisors have met by then. A host
that dies before it ever reached node 0 is lost after twice the heartbeat limit instead."""


def running_on(host: TestHost, marker: str) -> bool:
    return any(marker in cmd and not cmd.startswith("tmux") for _, cmd in host.processes())


def one_run(cluster: Cluster, n: int, limit: float, rep: int) -> dict[str, float]:
    name, seconds = f"brec{n}-{rep}", str(600 + rep)
    hosts = ",".join(h.name for h in cluster.hosts[:n])
    spare = cluster.hosts[n]
    env = cluster.env()
    launched = subprocess.run(
        [sys.executable, "-m", "launcher", "launch", "--name", name, "--hosts", hosts, "--spares", spare.name,
         "--restarts", "1", "--heartbeat-timeout", f"{limit:g}", "--runner", "exec", "sleep", seconds],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if launched.returncode != 0:
        raise SystemExit(f"launch failed: {launched.stderr.strip()}")
    victim = cluster.hosts[n - 1]
    while not all(running_on(h, f"sleep {seconds}") for h in cluster.hosts[:n]):
        time.sleep(POLL_S)
    time.sleep(SETTLE_S)
    crashed_at = time.time()
    victim.crash()
    survivors = [*cluster.hosts[: n - 1], spare]
    while not all(running_on(h, f"sleep {seconds}") for h in survivors):
        time.sleep(POLL_S)
    running = time.time() - crashed_at
    path = cluster.launcher_state_dir / "launcher" / "jobs" / f"{name}.json"
    record = json.loads(path.read_text())
    while len(record["attempts"]) < 2 or "ended_at" not in record["attempts"][0]:
        time.sleep(POLL_S)
        record = json.loads(path.read_text())
    subprocess.run(
        [sys.executable, "-m", "launcher", "kill", "--grace", "1", "--connect-timeout", "2", name],
        cwd=REPO, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    cluster.reboot(victim)
    return {
        "lost": record["attempts"][0]["ended_at"] - crashed_at,
        "relaunched": record["attempts"][1]["started_at"] - crashed_at,
        "running": running,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,16", help="host counts, comma-separated (default 3,16)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--heartbeat-timeout", type=float, default=15.0, help="as launch's (default 15)")
    args = parser.parse_args()
    print(f"heartbeat timeout {args.heartbeat_timeout:g} s; seconds from the crash")
    print(f"{'hosts':>5}  {'lost':>6}  {'relaunched':>10}  {'running':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-recovery-") as work, start_cluster(n + 1, Path(work)) as cluster:
            for rep in range(args.repeat):
                r = one_run(cluster, n, args.heartbeat_timeout, rep)
                print(f"{n:>5}  {r['lost']:>6.1f}  {r['relaunched']:>10.1f}  {r['running']:>7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
