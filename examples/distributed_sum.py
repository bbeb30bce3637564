"""Smallest useful check that a multi-host job is wired up: every rank all-reduces one number.

Run under torchrun (or the launcher, which starts torchrun on each host)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 examples/distributed_sum.py

Each rank contributes ``rank + 1``, so the sum must be ``world_size * (world_size + 1) / 2``.
Every rank prints exactly one line and exits 0 when the sum is right, 1 when it is not::

    distributed_sum: host=<host> rank=<r> local_rank=<l> world_size=<w> device=<d> sum=<s> ok
    distributed_sum: host=<host> rank=<r> ... sum=<s> expected=<e> WRONG

The line names the host so that a launcher's merged logs show which machines took part.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

# Long enough for the slowest host of a cold multi-host start to arrive at the rendezvous,
# short enough that a missing host fails the job instead of hanging it.
INIT_TIMEOUT = timedelta(seconds=120)


def main() -> int:
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])

    if torch.cuda.is_available():
        # One GPU per local process; set it before init so NCCL binds the right device.
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"

    # MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE come from torchrun's environment.
    dist.init_process_group(backend=backend, timeout=INIT_TIMEOUT)
    try:
        # float64 holds every integer sum we could meet exactly, and NCCL supports it.
        value = torch.tensor([rank + 1], dtype=torch.float64, device=device)
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        total = int(value.item())
        expected = world_size * (world_size + 1) // 2

        prefix = (
            f"distributed_sum: host={socket.gethostname()} rank={rank} "
            f"local_rank={local_rank} world_size={world_size} device={device} sum={total}"
        )
        if total == expected:
            print(f"{prefix} ok", flush=True)
            return 0
        print(f"{prefix} expected={expected} WRONG", flush=True)
        return 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
