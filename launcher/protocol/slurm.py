"""What a ``launcher sbatch`` task is told (``node/slurm_task.py``): no request of the
agent's, a JSON argument of the batch script's srun line; stdlib only."""

from __future__ import annotations

import dataclasses
from typing import Literal


def slurm_field(name: Literal["rdzv_host", "rdzv_port", "run_dir", "node_rank"]) -> str:
    """A value only the SLURM task knows, as a placeholder in its command (``launcher sbatch``).

    NUL cannot occur in an argument or a variable, so filling it in never touches user text.
    """
    return f"\0{name}\0"


@dataclasses.dataclass(frozen=True)
class TaskCommand:
    argv: list[str]
    env: dict[str, str]
    """On top of the task's environment (srun passes on the batch script's exports)."""


@dataclasses.dataclass(frozen=True)
class SlurmTask:
    """What ``python -m launcher.node.slurm_task RDZV_HOST RDZV_PORT TASK`` runs on one node."""

    job: str
    cwd: str
    first: TaskCommand
    """Node 0's command: it serves the rendezvous."""
    rest: TaskCommand
    """Every other node's command."""
