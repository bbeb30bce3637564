"""The ``launcher doctor`` messages of the wire (``registry.py`` puts them in its
tables); stdlib only. ``Checkup`` asks a node what a launch needs there and starts nothing;
the first node (``listen``) holds a rendezvous port until its agent ends, the others probe it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from launcher.protocol.base import Request
from launcher.protocol.messages import Probe


@dataclasses.dataclass(frozen=True)
class GpuReport:
    count: int
    """Processes a launch would run here by default (GPUs, or MIG devices); 0: no GPU."""
    models: list[str] = dataclasses.field(default_factory=list)
    free_mib: list[int] = dataclasses.field(default_factory=list)
    """Free memory of each GPU."""
    busy: list[str] = dataclasses.field(default_factory=list)
    """GPUs held by processes of no launcher job: ``GPU 0: pid 123 (python)``."""
    note: str = ""
    """Where the GPUs were read from, or why none were found."""


@dataclasses.dataclass(frozen=True)
class GpuHealth:
    """One GPU's health from ``nvidia-smi -q`` (``node/gpu_health.py``)."""

    index: int
    name: str
    errors: list[str] = dataclasses.field(default_factory=list)
    """Faults that make the GPU unfit: uncorrectable ECC errors, a failed row remap."""
    warnings: list[str] = dataclasses.field(default_factory=list)
    """What slows it or wants a reset: clocks held down, a narrow PCIe link, NVLink down."""
    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None


@dataclasses.dataclass(frozen=True)
class DiskSpace:
    what: str
    path: str
    free: int | None
    """Bytes free there (or under its nearest existing parent); None: unreadable."""
    exists: bool = True
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class NodeReport:
    """``launcher doctor`` on one node (``node/doctor.py``)."""

    received: float
    """The node's clock when the request came (with ``time``: the clock offset, NTP's way)."""
    time: float
    """The node's clock when it answered."""
    python_version: str
    tmux: str | None
    torch: str | None
    cuda: str | None
    nccl: str | None
    gpus: GpuReport
    disks: list[DiskSpace]
    port: int | None = None
    """The first node: the port it listens on until its agent ends."""
    candidates: list[str] = dataclasses.field(default_factory=list)
    probes: list[Probe] = dataclasses.field(default_factory=list)
    preset_env: list[str] = dataclasses.field(default_factory=list)
    gpu_health: list[GpuHealth] = dataclasses.field(default_factory=list)
    """Where there are GPUs: each one's health (empty without nvidia-smi)."""


@dataclasses.dataclass(frozen=True)
class Checkup(Request[NodeReport]):
    """``launcher doctor``: what a launch needs here; starts nothing. The first node
    (``listen``) holds a rendezvous port until its agent ends; the others probe it."""

    op: ClassVar[str] = "checkup"
    cwd: str
    listen: bool = False
    port: int | None = None
    probe: list[str] = dataclasses.field(default_factory=list)
    probe_port: int | None = None
    probe_timeout: float = 3.0


DOCTOR_ANSWERS: dict[type[Request[Any]], type[Any]] = {Checkup: NodeReport}

BANDWIDTH_MODULE = "launcher.bandwidth_job"
"""``launcher doctor --bandwidth``'s job, run as ``python -m`` on every host (one process each)."""
BANDWIDTH_MARKER = "LAUNCHER_BANDWIDTH "
"""The bandwidth job's rank 0 prints this, then its results as one line of JSON."""
