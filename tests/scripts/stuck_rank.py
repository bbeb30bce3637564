"""One rank is stuck in its own function; the others wait for it in an all-reduce (a hang).

STUCK_RANK (default 4) never reaches the collective. The job prints nothing after joining,
so ``launch --hang-timeout`` sees it silent.
"""

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def load_batch_forever() -> None:
    while True:
        time.sleep(1)


def train_step() -> None:
    dist.all_reduce(torch.ones(1))


dist.init_process_group("gloo", timeout=timedelta(minutes=30))
rank = dist.get_rank()
print(f"stuck_rank: rank {rank} joined", flush=True)
if rank == int(os.environ.get("STUCK_RANK", "4")):
    load_batch_forever()
train_step()
