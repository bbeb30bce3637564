"""``nvidia-smi``'s answers read (pure): the GPUs, their MIG devices, the processes on them.

Standard library only, as everything the node agent imports. ``gpus.py`` runs the tool
and hands its output here; every parser raises ``UnreadableOutput`` on what it cannot read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

APP_FIELDS = ("pid", "gpu_uuid", "used_memory")
"""The fields ``gpus.py`` asks ``--query-compute-apps`` for, in this order."""


@dataclass(frozen=True)
class MigDevice:
    """One MIG device: a slice of a GPU that CUDA sees as a device of its own."""

    device: int
    """Its number within its GPU (``Device N`` in ``nvidia-smi -L``)."""
    profile: str
    """Its MIG profile, e.g. ``1g.5gb`` or ``3g.20gb``."""
    uuid: str
    """``MIG-...``: what ``CUDA_VISIBLE_DEVICES`` takes to select it."""


@dataclass(frozen=True)
class Gpu:
    """One physical GPU."""

    index: int
    """``nvidia-smi``'s index (PCI bus order), not an index under ``CUDA_VISIBLE_DEVICES``."""
    uuid: str | None
    """``GPU-...``; None where not known (the ``/proc`` fallback before NVML has run)."""
    name: str
    """The model, e.g. ``NVIDIA A100-SXM4-80GB``."""
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    """Memory in MiB; None where ``nvidia-smi`` says ``[N/A]`` or was not there to ask."""
    mig_enabled: bool = False
    """MIG mode is on: CUDA can use only the GPU's MIG devices, not the GPU itself."""
    mig_devices: tuple[MigDevice, ...] = ()


@dataclass(frozen=True)
class GpuProcess:
    """A process that holds memory on a GPU."""

    pid: int
    """As ``nvidia-smi`` sees it: in a container, possibly a pid of the host's namespace."""
    gpu_uuid: str
    gpu_index: int | None
    """The GPU's index, when an inventory was given to map the uuid (MIG: the parent GPU's)."""
    used_memory_mib: int | None


class UnreadableOutput(ValueError):
    """``nvidia-smi`` printed something that is not what was asked for."""


def parse_gpu_query(text: str, with_mig: bool = True) -> tuple[Gpu, ...]:
    """``nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,memory.free[,mig.mode.current]
    --format=csv,noheader,nounits``, one GPU per line."""
    trailing = 4 if with_mig else 3  # the fields after the name
    gpus = []
    for line in text_lines(text):
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 3 + trailing:
            raise UnreadableOutput(f"expected {3 + trailing} fields, got {line!r}")
        # nvidia-smi does not quote: a comma in a name would split it, so the name is what
        # lies between the first two fields and the last ones.
        name = ", ".join(fields[2 : len(fields) - trailing])
        total, used, free = fields[len(fields) - trailing : len(fields) - trailing + 3]
        try:
            gpu = Gpu(
                index=int(fields[0]),
                uuid=_known(fields[1]),
                name=name,
                memory_total_mib=_mib(total),
                memory_used_mib=_mib(used),
                memory_free_mib=_mib(free),
                mig_enabled=with_mig and fields[-1] == "Enabled",
            )
        except ValueError:
            raise UnreadableOutput(f"not a GPU: {line!r}") from None
        if not name or gpu.uuid is None:
            raise UnreadableOutput(f"not a GPU: {line!r}")
        gpus.append(gpu)
    return tuple(gpus)


_LIST_GPU = re.compile(r"GPU (\d+): (.+) \(UUID: ([^)\s]+)\)")
# Drivers from R470 print "MIG 1g.5gb     Device  0: (UUID: MIG-<uuid>)"; R450/R460 printed
# "MIG 1g.5gb Device 0: (UUID: MIG-GPU-<uuid>/7/0)". Both are accepted.
_LIST_MIG = re.compile(r"\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)\s]+)\)")


def parse_gpu_list(text: str) -> dict[int, tuple[MigDevice, ...]]:
    """``nvidia-smi -L``: each GPU's index with its MIG devices (none for most GPUs)."""
    devices: dict[int, list[MigDevice]] = {}
    current: int | None = None
    for line in text_lines(text):
        if gpu := _LIST_GPU.fullmatch(line.rstrip()):
            current = int(gpu[1])
            devices[current] = []
        elif (mig := _LIST_MIG.fullmatch(line.rstrip())) and current is not None:
            devices[current].append(MigDevice(device=int(mig[2]), profile=mig[1], uuid=mig[3]))
        else:
            raise UnreadableOutput(f"not a GPU or MIG device: {line!r}")
    return {index: tuple(found) for index, found in devices.items()}


def parse_compute_apps(text: str, index_by_uuid: dict[str, int] | None = None) -> tuple[GpuProcess, ...]:
    """``nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits``."""
    index_by_uuid = index_by_uuid or {}
    processes = []
    for line in text_lines(text):
        if line.strip() == "No running processes found":  # older drivers say so even with noheader
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(APP_FIELDS) or not fields[1]:
            raise UnreadableOutput(f"expected {len(APP_FIELDS)} fields, got {line!r}")
        try:
            pid, used = int(fields[0]), _mib(fields[2])
        except ValueError:
            raise UnreadableOutput(f"not a process: {line!r}") from None
        processes.append(GpuProcess(pid, fields[1], index_by_uuid.get(fields[1]), used))
    return tuple(processes)


def parse_proc_information(text: str) -> dict[str, str]:
    """A ``/proc/driver/nvidia/gpus/<bus id>/information`` file: ``Key: <tab> value`` lines."""
    info = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            info[key.strip()] = value.strip()
    return info


def text_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _known(value: str) -> str | None:
    """None for nvidia-smi's ``[N/A]``, ``[Not Supported]``, ``[Unknown Error]`` ... ."""
    return None if value.startswith("[") and value.endswith("]") else value


def _mib(value: str) -> int | None:
    known = _known(value)
    return None if known is None else int(known)
