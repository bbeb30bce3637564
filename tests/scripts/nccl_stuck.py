"""A real NCCL hang: both ranks join one all-reduce, then rank 1 stops in its own function
while rank 0 waits for it in a second one, until NCCL's timeout (NCCL_HANG_TIMEOUT s)."""

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def load_batch_forever() -> None:
    while True:
        time.sleep(1)


local_rank = int(os.environ["LOCAL_RANK"])
torch.cuda.set_device(local_rank)
timeout = timedelta(seconds=int(os.environ.get("NCCL_HANG_TIMEOUT", "60")))
dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
rank = dist.get_rank()
tensor = torch.ones(1, device="cuda")
dist.all_reduce(tensor)
torch.cuda.synchronize()
print(f"nccl_stuck: rank {rank} joined", flush=True)
if rank == 1:
    load_batch_forever()
dist.all_reduce(tensor)
torch.cuda.synchronize()
