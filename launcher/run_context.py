"""Where this process stands in its job, for training scripts: ``launcher.context()``.

::

    import launcher

    ctx = launcher.context()
    torch.distributed.init_process_group("nccl" if ctx.device != "cpu" else "gloo")
    model.to(ctx.device)
    if ctx.is_main:
        save_checkpoint(...)

The same call gives the same answers however the script was started. Each way of
starting it is a *source* of variables, and the first source below that applies is
read (``RunContext.source`` says which):

==============  ==============================  ==============================================
source          applies when                    reads
==============  ==============================  ==============================================
``torchrun``    ``RANK`` is set                 ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
                                                ``GROUP_RANK``, ``GROUP_WORLD_SIZE``,
                                                ``LOCAL_WORLD_SIZE``
``launcher``    ``NODE_RANK`` and ``NNODES``    ``NODE_RANK``, ``NNODES``, ``NPROC_PER_NODE``,
                are set                         ``WORLD_SIZE``, and ``LOCAL_RANK`` if set
``slurm``       ``SLURM_PROCID`` and            ``SLURM_PROCID``, ``SLURM_LOCALID``,
                ``SLURM_STEP_ID`` are set       ``SLURM_NODEID``, ``SLURM_STEP_NUM_TASKS`` (else
                                                ``SLURM_NTASKS``), ``SLURM_STEP_NUM_NODES``
                                                (else ``SLURM_NNODES``)
``single``      none of the above               rank 0 of 1, on one node
==============  ==============================  ==============================================

Why this order: the innermost launcher wins. ``torchrun`` is what ``launcher launch``
runs by default, and under ``srun`` it is started *by* srun (one torchrun per node), so
``SLURM_PROCID`` there numbers the torchruns, not the ranks: torchrun's variables win
over SLURM's. ``launcher launch --runner python`` sets ``NODE_RANK``, ``NNODES``,
``NPROC_PER_NODE`` and ``WORLD_SIZE`` (not ``RANK``); it can run inside an srun step too
(``--hosts localhost`` passes the step's variables on), so it also wins over SLURM. Its
process is the first of its node (``rank = NODE_RANK * NPROC_PER_NODE``); workers it
starts itself that set ``LOCAL_RANK`` get ``rank = NODE_RANK * NPROC_PER_NODE + LOCAL_RANK``.
A batch script (``sbatch``) or an ``salloc`` shell is one process even though
``SLURM_NTASKS`` counts the allocation's tasks; only tasks that ``srun`` started carry
``SLURM_STEP_ID``, so only they are read as SLURM ranks.

A hand-written ``env://`` setup that sets ``RANK`` and ``WORLD_SIZE`` but not the rest
(``RANK=$SLURM_PROCID`` in an srun command) gets the missing ``LOCAL_RANK``,
``GROUP_RANK`` and ``GROUP_WORLD_SIZE`` from the SLURM task when there is one, else from
``LOCAL_WORLD_SIZE``, else as on one node.

Whatever the source, ``attempt`` is ``LAUNCHER_ATTEMPT``: 1 at launch (and when unset), 2
after the first restart of ``launch --restarts``, and so on. An empty variable counts as unset.
A value that is not a whole number, or numbers that contradict each other (``RANK=4`` with
``WORLD_SIZE=4``, ``LAUNCHER_ATTEMPT=0``), raise ``ContextError``, which names the variable.

Only the standard library is imported here: a script may ask for its context before
(or without) importing torch. See ``visible_gpus.py`` for how ``device`` is chosen.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from launcher.errors import UsageError
from launcher.protocol.base import ATTEMPT_VARIABLE, JOB_MARKER, RUN_DIR_VARIABLE
from launcher.protocol.stack import HEARTBEAT_DIR
from launcher.visible_gpus import visible_gpu_count

JOB_VARIABLE = JOB_MARKER
"""Set to the job name in every process that ``launcher launch`` starts."""

Source = Literal["torchrun", "launcher", "slurm", "single"]

_WHOLE_NUMBER = re.compile(r"[0-9]+")


class ContextError(UsageError):
    """A variable that says where this process stands in its job is unusable.

    ``variable`` is the variable at fault and ``value`` its value (None when it is
    missing); the message names both.
    """

    def __init__(self, variable: str, value: str | None, message: str) -> None:
        self.variable = variable
        self.value = value
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class RunContext:
    """Where this process stands in its job, as ``context()`` reads it from the environment."""

    rank: int
    """Global rank, from 0 to ``world_size - 1``."""
    local_rank: int
    """Rank among the processes of this node, from 0."""
    world_size: int
    """Number of processes in the job, on all nodes."""
    node_rank: int
    """This node's index, from 0 to ``nnodes - 1``."""
    nnodes: int
    """Number of nodes in the job."""
    host: str
    """This node's name: ``SLURMD_NODENAME`` where SLURM set it, else the host name."""
    device: str
    """``"cuda:<local_rank>"`` when this rank has a visible NVIDIA GPU, else ``"cpu"``."""
    launcher_job: str | None
    """The job's name when ``launcher launch`` started this process (``LAUNCHER_JOB``), else None."""
    source: Source
    """Which variables were read: ``"torchrun"``, ``"launcher"`` (``--runner python``), ``"slurm"`` or ``"single"``."""
    attempt: int
    """Which try of the job this is (``LAUNCHER_ATTEMPT``): 1 at launch, 2 after ``--restarts``' first restart..."""
    is_main: bool = field(init=False)
    """True for global rank 0: the one process that should log, save and report."""

    def __post_init__(self) -> None:
        # Derived, so it can never disagree with rank.
        object.__setattr__(self, "is_main", self.rank == 0)

    def heartbeat(self) -> None:
        """This rank is alive though silent (``--hang-timeout`` counts it as a printed line)."""
        run_dir = os.environ.get(RUN_DIR_VARIABLE)
        if run_dir and self.launcher_job:
            path = os.path.join(run_dir, HEARTBEAT_DIR, f"rank-{self.rank}")
            with contextlib.suppress(OSError):  # the job's own work matters more than this
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
                os.utime(path)


@dataclass(frozen=True)
class _Ranks:
    rank: int
    local_rank: int
    world_size: int
    node_rank: int
    nnodes: int
    source: Source


def context(environ: Mapping[str, str] | None = None) -> RunContext:
    """Where this process stands in its job, read from ``environ`` (default ``os.environ``).

    Works the same under ``launcher launch`` (torchrun or ``--runner python``), plain
    torchrun, ``srun`` (with or without torchrun under it) and a plain ``python`` process,
    which is rank 0 of 1. The module docstring gives the order sources are read in.
    Raises ``ContextError`` (a ``UsageError``) naming the variable whose value is unusable.
    """
    env = os.environ if environ is None else environ
    ranks = _read_ranks(env)
    gpus = visible_gpu_count(env)
    if (attempt := _optional(env, ATTEMPT_VARIABLE)) == 0:
        raise ContextError(ATTEMPT_VARIABLE, env[ATTEMPT_VARIABLE], f"{ATTEMPT_VARIABLE}=0: attempts count from 1")
    return RunContext(
        rank=ranks.rank,
        local_rank=ranks.local_rank,
        world_size=ranks.world_size,
        node_rank=ranks.node_rank,
        nnodes=ranks.nnodes,
        host=_get(env, "SLURMD_NODENAME") or socket.gethostname(),
        # Beyond the visible GPUs (16 CPU ranks on an 8-GPU node, say) a rank has no GPU
        # of its own; "cuda:<n>" would only fail later, far from the cause.
        device=f"cuda:{ranks.local_rank}" if ranks.local_rank < gpus else "cpu",
        launcher_job=_get(env, JOB_VARIABLE),
        source=ranks.source,
        attempt=1 if attempt is None else attempt,
    )


def _read_ranks(env: Mapping[str, str]) -> _Ranks:
    slurm_task = bool(_get(env, "SLURM_PROCID") and (_get(env, "SLURM_STEP_ID") or _get(env, "SLURM_STEPID")))
    if _get(env, "RANK") is not None:
        ranks = _torchrun_ranks(env, slurm_task)
    elif _get(env, "NODE_RANK") is not None and _get(env, "NNODES") is not None:
        ranks = _launcher_ranks(env)
    elif slurm_task:
        ranks = _slurm_ranks(env)
    else:
        ranks = _Ranks(rank=0, local_rank=0, world_size=1, node_rank=0, nnodes=1, source="single")
    _check_consistent(ranks, env)
    return ranks


def _torchrun_ranks(env: Mapping[str, str], slurm_task: bool) -> _Ranks:
    rank = _whole(env, "RANK")
    world_size = _required(env, "WORLD_SIZE", because="RANK is set")
    # torchrun sets all of these; the fallbacks are for hand-written env:// setups.
    per_node = _optional(env, "LOCAL_WORLD_SIZE")
    if per_node == 0:
        raise ContextError(
            "LOCAL_WORLD_SIZE", env["LOCAL_WORLD_SIZE"], "LOCAL_WORLD_SIZE=0: a node runs at least 1 process"
        )
    if per_node is None and not slurm_task:
        per_node = world_size  # one node, as nothing says otherwise
    local_rank = _first(env, "LOCAL_RANK", "SLURM_LOCALID" if slurm_task else None)
    node_rank = _first(env, "GROUP_RANK", "SLURM_NODEID" if slurm_task else None)
    nnodes = _first(env, "GROUP_WORLD_SIZE", _slurm_nnodes_variable(env) if slurm_task else None)
    if per_node and local_rank is not None and local_rank >= per_node:
        variable = "LOCAL_RANK" if _get(env, "LOCAL_RANK") else "SLURM_LOCALID"
        raise ContextError(
            variable,
            env[variable],
            f"local rank {local_rank} ({variable}) is not below the {per_node} process(es) per node"
            + (" (LOCAL_WORLD_SIZE)" if _get(env, "LOCAL_WORLD_SIZE") else " (WORLD_SIZE, on one node)"),
        )
    if per_node:  # 0 only from WORLD_SIZE=0, which _check_consistent reports
        local_rank = rank % per_node if local_rank is None else local_rank
        node_rank = rank // per_node if node_rank is None else node_rank
        nnodes = -(-world_size // per_node) if nnodes is None else nnodes
    return _Ranks(
        rank=rank,
        local_rank=0 if local_rank is None else local_rank,
        world_size=world_size,
        node_rank=0 if node_rank is None else node_rank,
        nnodes=1 if nnodes is None else nnodes,
        source="torchrun",
    )


def _launcher_ranks(env: Mapping[str, str]) -> _Ranks:
    node_rank = _whole(env, "NODE_RANK")
    nnodes = _whole(env, "NNODES")
    if nnodes and node_rank >= nnodes:  # here, before the ranks derived from it hide the cause
        raise ContextError(
            "NODE_RANK",
            env["NODE_RANK"],
            f"node rank {node_rank} (NODE_RANK) is not below the number of nodes {nnodes} (NNODES)",
        )
    world_size = _optional(env, "WORLD_SIZE")
    per_node = _nproc_per_node(env, nnodes, world_size)
    local_rank = _optional(env, "LOCAL_RANK") or 0
    if local_rank >= per_node:
        raise ContextError(
            "LOCAL_RANK",
            env["LOCAL_RANK"],
            f"LOCAL_RANK={local_rank} is not below the {per_node} process(es) per node (NPROC_PER_NODE)",
        )
    return _Ranks(
        rank=node_rank * per_node + local_rank,
        local_rank=local_rank,
        world_size=nnodes * per_node if world_size is None else world_size,
        node_rank=node_rank,
        nnodes=nnodes,
        source="launcher",
    )


def _nproc_per_node(env: Mapping[str, str], nnodes: int, world_size: int | None) -> int:
    """``NPROC_PER_NODE`` as torchrun reads ``--nproc-per-node``: a number, ``gpu``, ``cpu`` or ``auto``."""
    value = _get(env, "NPROC_PER_NODE")
    if value is None:
        return max(1, world_size // nnodes) if world_size and nnodes else 1
    if _WHOLE_NUMBER.fullmatch(value.strip()):
        if int(value) == 0:
            raise ContextError("NPROC_PER_NODE", value, "NPROC_PER_NODE=0: a node runs at least 1 process")
        return int(value)
    spec = value.strip()
    if spec == "gpu":
        gpus = visible_gpu_count(env)
        if gpus:
            return gpus
        raise ContextError("NPROC_PER_NODE", value, "NPROC_PER_NODE='gpu' but no GPU is visible to this process")
    if spec == "auto":
        return visible_gpu_count(env) or os.cpu_count() or 1
    if spec == "cpu":
        return os.cpu_count() or 1
    raise ContextError(
        "NPROC_PER_NODE", value, f"NPROC_PER_NODE={value!r} is not a whole number, 'gpu', 'cpu' or 'auto'"
    )


def _slurm_ranks(env: Mapping[str, str]) -> _Ranks:
    world_variable = "SLURM_STEP_NUM_TASKS" if _get(env, "SLURM_STEP_NUM_TASKS") else "SLURM_NTASKS"
    return _Ranks(
        rank=_whole(env, "SLURM_PROCID"),
        local_rank=_required(env, "SLURM_LOCALID", because="SLURM_PROCID is set"),
        world_size=_required(env, world_variable, because="SLURM_PROCID is set"),
        node_rank=_required(env, "SLURM_NODEID", because="SLURM_PROCID is set"),
        nnodes=_required(env, _slurm_nnodes_variable(env), because="SLURM_PROCID is set"),
        source="slurm",
    )


def _slurm_nnodes_variable(env: Mapping[str, str]) -> str:
    # The step's node count: `srun -N 2` inside a 4-node allocation runs on 2.
    return "SLURM_STEP_NUM_NODES" if _get(env, "SLURM_STEP_NUM_NODES") else "SLURM_NNODES"


_VARIABLES: dict[Source, tuple[str, str, str, str, str]] = {
    # rank, local rank, world size, node rank, nnodes: the names to blame in messages
    "torchrun": ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE"),
    "launcher": ("NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "NNODES"),
    "slurm": ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "SLURM_NODEID", "SLURM_NNODES"),
    "single": ("", "", "", "", ""),
}


def _check_consistent(ranks: _Ranks, env: Mapping[str, str]) -> None:
    rank, local, world, node, nodes = _VARIABLES[ranks.source]

    def fail(variable: str, message: str) -> ContextError:
        return ContextError(variable, env.get(variable), message)

    if ranks.nnodes < 1:
        raise fail(nodes, f"{nodes}={ranks.nnodes}: a job has at least 1 node")
    if ranks.world_size < 1:
        raise fail(world, f"{world}={ranks.world_size}: a job has at least 1 process")
    if ranks.rank >= ranks.world_size:
        raise fail(rank, f"rank {ranks.rank} ({rank}) is not below the world size {ranks.world_size} ({world})")
    if ranks.local_rank >= ranks.world_size:
        raise fail(
            local, f"local rank {ranks.local_rank} ({local}) is not below the world size {ranks.world_size} ({world})"
        )
    if ranks.node_rank >= ranks.nnodes:
        raise fail(
            node, f"node rank {ranks.node_rank} ({node}) is not below the number of nodes {ranks.nnodes} ({nodes})"
        )


def _get(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name) or None  # empty counts as unset


def _whole(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    if not _WHOLE_NUMBER.fullmatch(value.strip()):
        raise ContextError(name, value, f"{name}={value!r} is not a whole number")
    return int(value)


def _optional(env: Mapping[str, str], name: str) -> int | None:
    return None if _get(env, name) is None else _whole(env, name)


def _required(env: Mapping[str, str], name: str, *, because: str) -> int:
    if _get(env, name) is None:
        raise ContextError(name, None, f"{because} but {name} is not")
    return _whole(env, name)


def _first(env: Mapping[str, str], name: str, fallback: str | None) -> int | None:
    value = _optional(env, name)
    return _optional(env, fallback) if value is None and fallback is not None else value
