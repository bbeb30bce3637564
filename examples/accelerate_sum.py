"""A Hugging Face accelerate script, unchanged from how one runs it with ``accelerate launch``.

``Accelerator()`` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so under ``launcher launch`` (or ``launcher sbatch``) it joins
the job's process group without any accelerate config::

    launcher launch --hosts hosts --nproc-per-node 2 examples/accelerate_sum.py

On machines without GPUs, pass ``-e ACCELERATE_USE_CPU=true``, which is what ``accelerate launch
--cpu`` sets too: without it, ``Accelerator()`` runs each process alone (``type=NO``).

Each process trains a tiny linear model for a few steps on its shard of the data
(``accelerator.prepare``: DistributedDataParallel), then checks that the weights are the
same on every process and that ``accelerator.reduce`` sums ``rank + 1`` over the job.
Every process prints one line and exits 0 when both hold, 1 when not::

    accelerate_sum: host=<host> rank=<r> local_rank=<l> world_size=<w> type=<MULTI_CPU|MULTI_GPU> sum=<s> ok
"""

from __future__ import annotations

import os
import socket
import sys

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

STEPS = 4


def main() -> int:
    accelerator = Accelerator()
    torch.manual_seed(0)  # the same data and start weights on every process
    inputs = torch.randn(STEPS * 2 * accelerator.num_processes, 4)
    targets = inputs.sum(dim=1, keepdim=True)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    model, optimizer, data = accelerator.prepare(model, optimizer, data)

    for x, y in data:
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()

    weights = accelerator.unwrap_model(model).weight.detach().reshape(1, -1)
    everyone = accelerator.gather(weights)
    in_step = bool(torch.allclose(everyone, everyone[0].expand_as(everyone)))
    value = torch.tensor([accelerator.process_index + 1], dtype=torch.float64, device=accelerator.device)
    total = int(accelerator.reduce(value, reduction="sum").item())
    expected = accelerator.num_processes * (accelerator.num_processes + 1) // 2

    line = (
        f"accelerate_sum: host={socket.gethostname()} rank={accelerator.process_index} "
        f"local_rank={accelerator.local_process_index} world_size={accelerator.num_processes} "
        f"type={accelerator.distributed_type.value} sum={total}"
    )
    ok = total == expected and in_step
    print(f"{line} {'ok' if ok else f'expected={expected} in_step={in_step} WRONG'}", flush=True)
    accelerator.end_training()
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    # As in train_llm.py: with torch 2.13, gloo and DDP, a worker thread of the process group
    # may free a finished collective while Python is finalizing, and the process aborts
    # ("terminate called without an active exception"): a good run reported as a failed
    # rank (pytorch#107298). Seen here about one run in four under srun. Nothing is left to
    # close but our own output.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
