"""Functions that ``launcher.run`` runs in the tests (test_api_local.py, test_api_e2e.py).

They live in a module of their own, so that they travel by reference: every rank imports
this module (the job's ``cwd`` is this directory, which the test cluster's hosts share),
as a user's training module would be imported on the nodes.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from typing import Any

import launcher


def where_am_i(scale: int, *, offset: int = 0) -> dict[str, Any]:
    """This rank's place in the job, from launcher.context() and from torchrun's variables."""
    ctx = launcher.context()
    return {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "local_rank": ctx.local_rank,
        "host": socket.gethostname(),
        "env_rank": int(os.environ["RANK"]),
        "value": ctx.rank * scale + offset,
    }


def all_reduce_rank() -> tuple[int, float]:
    """All-reduce (gloo) every rank's number: (rank, sum), the sum the same on every rank."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    return dist.get_rank(), float(value.item())


def fail_on_rank(bad: int) -> int:
    """Rank ``bad`` raises; the others wait in a collective that never completes without it."""
    import torch.distributed as dist

    if launcher.context().rank == bad:
        raise ValueError(f"rank {bad} refuses")
    dist.init_process_group("gloo")
    dist.barrier()
    return 0


def unpicklable_result() -> Any:
    return threading.Lock()


def big_value(mib_by_rank: dict[int, float]) -> bytes:
    """Bytes of this rank's size in ``mib_by_rank``, all equal to the rank."""
    rank = launcher.context().rank
    return bytes([rank]) * int(mib_by_rank[rank] * 2**20)


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def run_context() -> dict[str, Any]:
    return dataclasses.asdict(launcher.context())
