"""One rank raises before an all-reduce; the others block in it, as in a real crashed job.

Without a teardown, the healthy ranks would wait for the dead one until gloo's timeout.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

dist.init_process_group("gloo", timeout=timedelta(minutes=30))
rank = dist.get_rank()
print(f"collective_hang: rank {rank} joined", flush=True)
if rank == int(os.environ.get("FAIL_RANK", "3")):
    raise ValueError(f"rank {rank} hit a bad batch")
dist.all_reduce(torch.ones(1))  # blocks: the failed rank never arrives
print(f"collective_hang: rank {rank} passed the all-reduce (should not happen)", flush=True)
