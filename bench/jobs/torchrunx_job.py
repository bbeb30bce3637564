"""The torchrunx contender's launching program: runs one of the benchmark's jobs on every
host with ``torchrunx.Launcher``, one worker per host, and stays in the foreground until
the job ends (as ``torchrunx`` always does).

    python -m bench.jobs.torchrunx_job --hosts ADDR,ADDR --ssh-config FILE --callback ADDR \
        --out DIR {light,sum,dist-sleep} TAG [--helper]

The jobs are those of the other contenders, written as functions (torchrunx launches a
function, not a script): ``light`` sleeps (``sleeper.py``), ``sum`` all-reduces rank + 1
(``examples/distributed_sum.py``), ``dist-sleep`` all-reduces and sleeps, with a setsid
helper per rank if asked (``dist_sleep.py``). torchrunx sends a worker's output to the
launching machine; each job also appends its lines to ``DIR/<host>.log`` on the shared
filesystem, where the recipes' jobs write theirs, so that the runner sees every contender's
output the same way.

Two things the test cluster needs and a real cluster would give torchrunx by itself:

* Its agents call back to ``socket.getfqdn()`` of the launching machine, a name the
  hosts cannot resolve (their ``/etc/hosts`` names the hosts only): ``--callback`` is
  the launching machine's address on the cluster network, given to torchrunx as that name.
* It resolves each host name on the launching machine (``socket.gethostbyname``), where
  ``h0`` is only an ssh-config alias: the hosts are given by address (``--hosts``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HELPER_MARKER = "bench-helper"  # as in dist_sleep.py


def _emit(out: str, line: str) -> None:
    with open(Path(out) / f"{socket.gethostname()}.log", "a") as log:
        log.write(line + "\n")
    print(line, flush=True)


def light(out: str, tag: str) -> None:
    _emit(out, f"running {tag}")
    time.sleep(3600)


def dist_sum(out: str) -> int:
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    value = torch.tensor([rank + 1], dtype=torch.float64)
    dist.all_reduce(value)
    total, expected = int(value.item()), world_size * (world_size + 1) // 2
    verdict = "ok" if total == expected else f"expected={expected} WRONG"
    _emit(
        out, f"distributed_sum: host={socket.gethostname()} rank={rank} world_size={world_size} sum={total} {verdict}"
    )
    return total


def dist_sleep(out: str, tag: str, helper: bool) -> None:
    import torch
    import torch.distributed as dist

    _emit(out, f"running {tag}")
    if helper:
        sleeper = [sys.executable, "-c", "import time; time.sleep(3600)", HELPER_MARKER, tag]
        subprocess.Popen(sleeper, start_new_session=True)
    value = torch.ones(1)
    dist.all_reduce(value)
    _emit(out, f"ready rank={os.environ['RANK']} sum={int(value.item())}")
    time.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", required=True, help="comma-separated addresses")
    parser.add_argument("--ssh-config", required=True)
    parser.add_argument("--callback", required=True, help="this machine's address on the hosts' network")
    parser.add_argument("--out", required=True)
    parser.add_argument("job", choices=("light", "sum", "dist-sleep"))
    parser.add_argument("tag")
    parser.add_argument("--helper", action="store_true")
    args = parser.parse_args()

    import torchrunx

    socket.getfqdn = lambda name="": args.callback  # see the module's docstring
    launcher = torchrunx.Launcher(
        hostnames=args.hosts.split(","),
        workers_per_host=1,
        ssh_config_file=args.ssh_config,
        backend=None if args.job == "light" else "gloo",
        worker_timeout=300,
    )
    if args.job == "light":
        launcher.run(light, args.out, args.tag)
    elif args.job == "sum":
        launcher.run(dist_sum, args.out)
    else:
        launcher.run(dist_sleep, args.out, args.tag, args.helper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
