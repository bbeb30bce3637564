"""Run a Python function on every rank of a job and get each rank's return value back.

    python examples/api_run.py                             # 2 processes on this machine
    python examples/api_run.py --hosts hosts --nproc-per-node 4

``launcher.run`` pickles ``all_reduce`` (with cloudpickle: a function of ``__main__``
travels whole), starts it under torchrun on every rank, and returns ``{rank: value}``.
Inside, ``init_process_group`` works as in any torchrun script. A rank that raises is
re-raised here as ``launcher.JobFailed``, naming its host and rank, with its traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import launcher


def all_reduce(scale: float) -> dict[str, Any]:
    """Sum ``rank + 1`` over every rank (gloo); each rank returns what it saw."""
    import torch
    import torch.distributed as dist

    ctx = launcher.context()
    dist.init_process_group("gloo")
    total = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(total)
    return {"host": ctx.host, "local_rank": ctx.local_rank, "sum": total.item() * scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="localhost", help="hosts file, inline list, or localhost")
    parser.add_argument("--nproc-per-node", default="2")
    args = parser.parse_args()

    values = launcher.run(all_reduce, 1.0, hosts=args.hosts, nproc_per_node=args.nproc_per_node)
    for rank, value in values.items():
        print(f"rank {rank}: host={value['host']} local_rank={value['local_rank']} sum={value['sum']:g}")
    world = len(values)
    return 0 if all(v["sum"] == world * (world + 1) / 2 for v in values.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
