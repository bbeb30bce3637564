"""``nvidia-smi`` run and read: the GPUs, their MIG devices, the processes on them.

Standard library only, as everything the node agent imports. ``run()`` is the one place
that starts the tool (with a timeout, its exit status read as NVIDIA documents it, its
warning lines set apart); the parsers are pure and raise ``UnreadableOutput`` on what
they cannot read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 30.0
"""How long one ``nvidia-smi`` call may take. Without persistence mode each call starts
the driver on every GPU, 1-3 s per GPU by NVIDIA's account: 8 GPUs need up to ~25 s. A
GPU that fell off the bus can hang it for good."""

VALID_WITH_WARNING = {14: "infoROM is corrupted"}
"""Exit statuses after which the output is still valid (``man nvidia-smi``, RETURN VALUE)."""
EXIT_MEANINGS = {
    2: "invalid argument",
    3: "operation not available",
    4: "insufficient permissions",
    6: "query unsuccessful",
    8: "external power cables not attached",
    9: "NVIDIA driver is not loaded",
    10: "kernel interrupt issue with a GPU",
    12: "NVML shared library not found",
    13: "this NVML does not implement a function",
    15: "a GPU has fallen off the bus",
}
_KILLED_GRACE_S = 1.0

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


@dataclass(frozen=True)
class SmiOutput:
    """One ``nvidia-smi`` call: its rows, exit status and warnings, or why it gave none."""

    rows: tuple[str, ...]
    """The non-empty stdout lines that are not warnings (empty when ``error`` is set)."""
    exit_status: int | None
    """None: it did not start, or hung and was killed."""
    warnings: tuple[str, ...] = ()
    """Lines such as ``WARNING: infoROM is corrupted at gpu 0000:3B:00.0``, and the meaning
    of an exit status after which the output is still valid (14)."""
    error: str | None = None
    """Why the rows cannot be had, in one line; None when they can."""
    no_devices: bool = False
    """It said ``No devices were found``: a driver without GPUs, not a failure."""

    @property
    def text(self) -> str:
        return "".join(f"{row}\n" for row in self.rows)


def run(args: list[str], timeout: float = DEFAULT_TIMEOUT_S) -> SmiOutput:
    """Run ``nvidia-smi *args`` (first on PATH); never raises for the tool's failures."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return SmiOutput((), None, error="no nvidia-smi")
    try:
        process = subprocess.Popen(
            [executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # its own process group, so that a kill reaches any child
        )
    except OSError as exc:
        return SmiOutput((), None, error=f"nvidia-smi could not start: {exc.strerror or exc}")
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return SmiOutput((), None, error=f"nvidia-smi did not answer within {timeout:g} s{_kill(process)}")
    return read_output(stdout, stderr, process.returncode)


def read_output(stdout: str, stderr: str, status: int) -> SmiOutput:
    """Sort what nvidia-smi printed into rows, warnings and an error, by its exit status."""
    lines = text_lines(stdout)
    warnings = tuple(line.strip() for line in lines if line.lstrip().upper().startswith("WARNING"))
    rows = tuple(line for line in lines if not line.lstrip().upper().startswith("WARNING"))
    if status == 0 or status in VALID_WITH_WARNING:
        if status:
            warnings += (f"{VALID_WITH_WARNING[status]} (exit status {status})",)
        return SmiOutput(rows, status, warnings)
    # nvidia-smi prints its errors on stdout, as often as not.
    message = next((line.strip() for line in (*text_lines(stderr), *rows, *warnings)), "")[:300]
    if message == "No devices were found":  # a node with the driver and no GPU: not a failure
        return SmiOutput((), status, warnings, no_devices=True)
    message = message or EXIT_MEANINGS.get(status, "no message")
    return SmiOutput((), status, warnings, error=f"nvidia-smi failed: {message} (exit status {status})")


def _kill(process: subprocess.Popen[str]) -> str:
    """SIGKILL the hung nvidia-smi and its process group; what to add to the message."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=_KILLED_GRACE_S)
    except subprocess.TimeoutExpired:
        # Stuck in the kernel (a GPU gone bad), where SIGKILL waits; waiting longer would
        # hang the agent too. Python reaps it later, if it ever ends.
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        return f" (and pid {process.pid} did not end when killed)"
    return ""


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
