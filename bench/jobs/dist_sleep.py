"""A real torchrun job that stays up: join the process group (gloo), all-reduce, sleep.

Prints ``ready rank=R`` once its all-reduce has passed. With ``--helper`` each rank also
leaves a helper process in a session of its own, as a daemonising data or logging service
does: a kill that only ends the tmux session's process tree misses it.

    python -m torch.distributed.run ... dist_sleep.py TAG [--helper]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

HELPER_MARKER = "bench-helper"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tag")
    parser.add_argument("--helper", action="store_true")
    args = parser.parse_args()
    if args.helper:
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(3600)", HELPER_MARKER, args.tag],
            start_new_session=True,
        )
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    value = torch.ones(1)
    dist.all_reduce(value)
    print(f"ready rank={os.environ['RANK']} sum={int(value.item())}", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
