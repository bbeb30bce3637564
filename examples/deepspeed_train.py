"""A DeepSpeed training script, unchanged from how one runs it with the ``deepspeed`` launcher.

``deepspeed.initialize`` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), so under ``launcher launch --hosts hosts`` (the hosts file of
``deepspeed --hostfile`` works as it is) it joins the job's process group::

    launcher launch --hosts hostfile --nproc-per-node 2 examples/deepspeed_train.py

It trains a tiny model for a few steps with ZeRO stage 1 (optimizer states partitioned
across the processes). On CPU it uses gloo and a plain torch optimizer, so none of
DeepSpeed's C++/CUDA ops need to be built; with GPUs, NCCL. At the end every process
checks that its weights equal everyone's and that an all-reduce of ``rank + 1`` is right,
prints one line, and exits 0 when both hold, 1 when not::

    deepspeed_train: host=<host> rank=<r> world_size=<w> zero_stage=1 loss=<first>-><last> ok
"""

from __future__ import annotations

import os
import socket
import sys

import deepspeed
import torch
import torch.distributed as dist

STEPS = 5


def main() -> int:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same start weights and data everywhere; each rank takes its own batch
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    inputs = torch.randn(STEPS, world_size, 4, 8)
    targets = inputs.sum(dim=-1, keepdim=True)
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 1},
        # A torch optimizer: DeepSpeed's own (FusedAdam, CPUAdam) are C++/CUDA ops.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    losses = []
    for step in range(STEPS):
        x = inputs[step, rank].to(engine.device)
        y = targets[step, rank].to(engine.device)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())

    flat = torch.cat([p.detach().reshape(-1) for p in engine.module.parameters()]).to(torch.float64)
    everyone = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(everyone, flat)
    in_step = all(torch.allclose(other, flat) for other in everyone)
    value = torch.tensor([rank + 1], dtype=torch.float64, device=flat.device)
    dist.all_reduce(value)
    expected = world_size * (world_size + 1) // 2

    line = (
        f"deepspeed_train: host={socket.gethostname()} rank={rank} local_rank={os.environ.get('LOCAL_RANK')} "
        f"world_size={world_size} zero_stage={engine.zero_optimization_stage()} "
        f"loss={losses[0]:.4f}->{losses[-1]:.4f}"
    )
    ok = in_step and int(value.item()) == expected and engine.zero_optimization_stage() == 1
    print(
        f"{line} {'ok' if ok else f'sum={int(value.item())} expected={expected} in_step={in_step} WRONG'}", flush=True
    )
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
