"""Launch a script from Python, follow its output, wait for it, and report how each rank ended.

    python examples/api_launch.py                          # 2 processes on this machine
    python examples/api_launch.py --hosts hosts --nproc-per-node 4

The script it launches is this file: started by the launcher (``launcher.context()``
says so), it is one rank of the job, which all-reduces its rank over gloo and prints one
line. Started by you, it launches that job and watches it. Exit status 0 when every
rank succeeded.
"""

from __future__ import annotations

import argparse
import sys

import launcher


def rank_main() -> int:
    """One rank of the job: the same code on a laptop, under torchrun, srun or the launcher."""
    import torch
    import torch.distributed as dist

    ctx = launcher.context()
    dist.init_process_group("gloo")
    total = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(total)
    expected = ctx.world_size * (ctx.world_size + 1) / 2
    print(f"host={ctx.host} rank={ctx.rank}/{ctx.world_size} device={ctx.device} sum={total.item():g}", flush=True)
    dist.destroy_process_group()
    return 0 if total.item() == expected else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="localhost", help="hosts file, inline list, or localhost")
    parser.add_argument("--nproc-per-node", default="2")
    args = parser.parse_args()

    job = launcher.launch(__file__, hosts=args.hosts, nproc_per_node=args.nproc_per_node)
    print(f"launched {job.name} on {', '.join(job.hosts)}")
    for line in job.logs(follow=True):  # ends by itself once the job ended everywhere
        if line.rank is not None:
            print(f"[{line.host} rank {line.rank}] {line.text}", flush=True)
    try:
        result = job.wait()
    except launcher.JobFailed as failed:
        print(f"failed: {failed}", file=sys.stderr)
        print("\n".join(failed.traceback), file=sys.stderr)
        return 1
    for rank, status in result.ranks.items():
        print(f"rank {rank} on {result.host_of(rank)}: {status.state} (exit code {status.exit_code})")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(rank_main() if launcher.context().launcher_job else main())
