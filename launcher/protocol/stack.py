"""The stack messages of the wire: take every rank's Python stack on a node, and the answer.

``node/stack.py`` answers them, ``job/stack.py`` asks. Standard library only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

from launcher.protocol.base import Request

StackMethod = Literal["auto", "py-spy", "faulthandler"]
"""``auto``: py-spy, and the in-process fallback where py-spy may not trace the rank."""
STACK_SIGNAL_OFFSET = 5
"""The fallback's signal is ``SIGRTMIN + 5``: free in torch, torchrun and the usual job
schedulers (SIGUSR1/2 are often taken by preemption handlers)."""
FAULTHANDLER_DIR = "faulthandler"
"""Under the run directory: ``<pid>.txt``, where the fallback of each rank writes its stacks."""
STACK_METHOD_VARIABLE = "LAUNCHER_STACK_METHOD"
"""Set on a node (``faulthandler``) to force the fallback there, as ``--method`` does."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One frame of a stack."""

    function: str
    file: str
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class RankStack:
    """Where one rank is: its innermost frame in user code, and the library frame it called."""

    rank: int
    pid: int | None = None
    method: str | None = None
    """How the stack was taken: ``py-spy`` or ``faulthandler``."""
    user: Frame | None = None
    """The innermost frame of the main thread outside the standard library and site-packages."""
    library: Frame | None = None
    """The frame ``user`` called into (a library's function), if any."""
    path: str | None = None
    """The file on the node with every thread's full stack."""
    text: str = ""
    """That file's content."""
    error: str | None = None
    """Why no stack was taken (the rank ended, py-spy is missing or was refused)."""


@dataclasses.dataclass(frozen=True)
class StackReport:
    """The stacks of the job's ranks on one node."""

    hostname: str
    ranks: list[RankStack]
    directory: str | None = None
    """``<run dir>/stacks/<time>``: where the full stacks were saved."""
    error: str | None = None
    """Why no rank could be looked at here (the job does not run here)."""
    nccl_dumps: dict[str, str] = dataclasses.field(default_factory=dict)
    """``--nccl``: each rank's flight-recorder dump here (its rank as text -> base64)."""
    nccl_problems: list[str] = dataclasses.field(default_factory=list)
    """``--nccl``: the ranks here whose dump could not be had, and why."""


@dataclasses.dataclass(frozen=True)
class TakeStacks(Request[StackReport]):
    """Every rank's stack, taken at once, none paused for more than a moment."""

    op: ClassVar[str] = "stack"
    job: str
    native: bool = False
    ranks: list[int] | None = None
    method: StackMethod = "auto"
    timeout: float = 20.0
    """Seconds for each rank's stack."""
    nccl: bool = False
    """Also make every NCCL rank dump its flight recorder (through its debug pipe) and send the dumps."""
    label: str | None = None
    """The name of the directory under ``<run dir>/stacks/`` (the same on every host); default: the time here."""


STACK_ANSWERS: dict[type[Request[Any]], type[Any]] = {TakeStacks: StackReport}


HANG_TIMEOUT_VARIABLE = "LAUNCHER_HANG_TIMEOUT"
"""In the job's environment (``launch --hang-timeout``): seconds without a line from any rank
(nor a heartbeat) after which the supervisors call the job hung."""
ON_HANG_VARIABLE = "LAUNCHER_ON_HANG"
"""``stop`` (the default: the job is stopped like a failure) or ``keep`` (left running)."""
HEARTBEAT_DIR = "heartbeats"
"""Under the run directory: ``rank-<R>``, touched by ``launcher.context().heartbeat()``."""


@dataclasses.dataclass(frozen=True)
class HangRecord:
    """``hung.json`` in a node's run directory: the job was silent too long; its stacks here."""

    last_output: float
    """When any rank of the job last printed or beat (epoch seconds), as this node knew it."""
    timeout: float
    stacks: StackReport
    """The ranks' places here (the full stacks' text stays in the files)."""
    kept: bool = False
    """``--on-hang keep``: the job was left running."""


NCCL_TRACE_PREFIX = "nccl_trace_rank_"
"""Under the run directory: ``<prefix><rank>``, NCCL's flight-recorder dump of each rank
(``TORCH_FR_DUMP_TEMP_FILE``), written on a collective's timeout or on demand."""
NCCL_PIPE_PREFIX = "nccl_pipe_"
"""Under the run directory: ``<prefix><rank>.pipe``, the FIFO each NCCL rank reads
(``TORCH_NCCL_DEBUG_INFO_PIPE_FILE``): a write to it makes the rank dump its flight recorder."""
