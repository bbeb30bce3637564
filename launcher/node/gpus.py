"""This node's NVIDIA GPUs, the CUDA devices ranks can use, and who holds them, found
without importing torch.

Runs ON each node (inside the node agent), so it uses the standard library only and
imports nothing from ``launcher`` but its own ``nvidia_smi.py`` (the runner and parsers).
Everything it returns is a frozen dataclass of plain fields (``dataclasses.asdict`` then
``json.dumps`` sends it as is). Expected failures never raise; the result says why, and
keeps "could not read the GPUs" (``GpuInventory.error``: nvidia-smi is there and failed
or hung) apart from "no GPU" (no driver, or ``No devices were found``).

``list_gpus()`` reports the **physical** GPUs, numbered as ``nvidia-smi`` numbers them
(PCI bus order; the launcher sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for its ranks so that
CUDA numbers them the same). ``usable_devices()`` narrows them to what a rank can use:
the node's own ``CUDA_VISIBLE_DEVICES`` (a scheduler's allocation: indices, ``GPU-`` or
``MIG-`` UUIDs), and on a GPU in MIG mode its MIG devices instead of the GPU.

Cost, in ``nvidia-smi`` calls (each one starts the tool and NVML: tens of milliseconds
with persistence mode on, up to seconds per GPU without):

- ``list_gpus()``: one ``--query-gpu`` call. ``nvidia-smi -L`` runs as well only when a GPU
  has MIG enabled, because the query cannot list MIG devices. A driver older than R450,
  which does not know the ``mig.mode.current`` field, costs one call more (the query is
  repeated without it). Without ``nvidia-smi``: a few small reads under ``/proc``.
- ``gpu_processes()``: one ``--query-compute-apps`` call.
- ``busy_gpus()``, ``usable_devices()`` and ``default_nproc()``: none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.node import nvidia_smi
from launcher.node.nvidia_smi import (
    APP_FIELDS,
    DEFAULT_TIMEOUT_S,
    Gpu,
    GpuProcess,
    MigDevice,
    UnreadableOutput,
    parse_compute_apps,
    parse_gpu_list,
    parse_gpu_query,
    parse_proc_information,
)

PROC_DRIVER = Path("/proc/driver/nvidia")
"""Where the kernel driver lists the GPUs: the fallback when ``nvidia-smi`` is absent."""

_GPU_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "memory.free")
_MIG_FIELD = "mig.mode.current"  # unknown to drivers before R450
_WHOLE_NUMBER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class GpuInventory:
    """The node's GPUs, and where the list came from."""

    gpus: tuple[Gpu, ...]
    source: str
    """``nvidia-smi`` or ``/proc/driver/nvidia (...)`` when GPUs were found; when none
    were, why not, e.g. ``nvidia-smi: No devices were found``."""
    error: str | None = None
    """Set when the GPUs could not be read (nvidia-smi failed, hung, or printed what is
    not a GPU list), e.g. ``nvidia-smi failed: Unable to determine the device handle for
    GPU 0000:3B:00.0: GPU is lost (exit status 15: a GPU has fallen off the bus)``: an
    empty ``gpus`` then means "unknown", not "none"."""
    warnings: tuple[str, ...] = ()
    """What nvidia-smi warned of while its answer was still valid (an infoROM, exit 14)."""


@dataclass(frozen=True)
class Device:
    """One CUDA device a rank can be given."""

    gpu: int
    """The physical GPU's index (nvidia-smi's); for a MIG device, its GPU's."""
    id: str
    """What ``CUDA_VISIBLE_DEVICES`` takes to select it: the entry of the node's own
    ``CUDA_VISIBLE_DEVICES`` when set, else the GPU's index, or a ``MIG-`` UUID."""
    mig: bool = False


@dataclass(frozen=True)
class GpuProcesses:
    """The compute processes on the node's GPUs."""

    processes: tuple[GpuProcess, ...]
    error: str | None = None
    """Why the list could not be had (then ``processes`` is empty); None when it was."""


@dataclass(frozen=True)
class BusyGpu:
    """A GPU that processes hold memory on, other than those ``busy_gpus`` was told to ignore."""

    uuid: str
    index: int | None
    pids: tuple[int, ...]
    used_memory_mib: int | None
    """What those processes hold together; None if ``nvidia-smi`` did not say for one."""


# ---------------------------------------------------------------------------- the API


def list_gpus(timeout: float = DEFAULT_TIMEOUT_S, proc_driver: Path | None = None) -> GpuInventory:
    """The node's physical GPUs (``CUDA_VISIBLE_DEVICES`` is not applied: see
    ``usable_devices``); see the module's docstring for what each call costs. Without
    nvidia-smi they are read from ``proc_driver`` (default ``PROC_DRIVER``)."""
    query = [f"--query-gpu={','.join((*_GPU_FIELDS, _MIG_FIELD))}", "--format=csv,noheader,nounits"]
    output = nvidia_smi.run(query, timeout)
    if output.error == "no nvidia-smi":
        return _gpus_from_proc(PROC_DRIVER if proc_driver is None else proc_driver)
    with_mig = True
    if output.error is not None and _MIG_FIELD in output.error:  # "Field "mig.mode.current" is not a valid field ..."
        query[0] = f"--query-gpu={','.join(_GPU_FIELDS)}"
        output = nvidia_smi.run(query, timeout)
        with_mig = False
    if output.no_devices:
        return GpuInventory((), "nvidia-smi: No devices were found", warnings=output.warnings)
    if output.error is not None:
        return GpuInventory((), output.error, error=output.error, warnings=output.warnings)
    try:
        gpus = parse_gpu_query(output.text, with_mig)
    except UnreadableOutput as exc:
        why = f"nvidia-smi --query-gpu: {exc}"
        return GpuInventory((), why, error=why, warnings=output.warnings)
    if not gpus:
        return GpuInventory((), "nvidia-smi listed no GPU", warnings=output.warnings)
    if not any(gpu.mig_enabled for gpu in gpus):
        return GpuInventory(gpus, "nvidia-smi", warnings=output.warnings)
    listing = nvidia_smi.run(["-L"], timeout)
    unlisted = listing.error
    if unlisted is None:
        try:
            found = _with_mig_devices(gpus, parse_gpu_list(listing.text))
            return GpuInventory(found, "nvidia-smi", warnings=output.warnings + listing.warnings)
        except UnreadableOutput as exc:
            unlisted = f"nvidia-smi -L: {exc}"
    return GpuInventory(gpus, f"nvidia-smi (its MIG devices are unknown: {unlisted})", warnings=output.warnings)


def usable_devices(inventory: GpuInventory, cuda_visible: str | None) -> tuple[Device, ...]:
    """The CUDA devices a process of this node can use, in CUDA's order: every GPU, or
    those the node's own ``CUDA_VISIBLE_DEVICES`` names, read as CUDA reads it (the list
    ends at its first entry that names no device); a GPU in MIG mode gives its MIG devices."""
    if cuda_visible is None:
        return tuple(device for gpu in inventory.gpus for device in _devices_of(gpu, str(gpu.index)))
    found: list[Device] = []
    for entry in (part.strip() for part in cuda_visible.split(",")):
        devices = _named_devices(inventory.gpus, entry)
        if not devices:
            break
        found.extend(device for device in devices if device not in found)
    return tuple(found)


def gpu_processes(inventory: GpuInventory | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> GpuProcesses:
    """The processes holding GPU memory on this node; ``inventory`` (if given) maps each
    GPU's uuid to its index."""
    query = [f"--query-compute-apps={','.join(APP_FIELDS)}", "--format=csv,noheader,nounits"]
    output = nvidia_smi.run(query, timeout)
    if output.no_devices:
        return GpuProcesses(())
    if output.error is not None:
        return GpuProcesses((), output.error)
    try:
        return GpuProcesses(parse_compute_apps(output.text, _index_by_uuid(inventory)))
    except UnreadableOutput as exc:
        return GpuProcesses((), f"nvidia-smi --query-compute-apps: {exc}")


def busy_gpus(processes: Iterable[GpuProcess], is_launcher_job: Callable[[int], bool]) -> tuple[BusyGpu, ...]:
    """The GPUs held by processes for which ``is_launcher_job(pid)`` is false, by index.

    ``is_launcher_job(pid)`` is asked once per pid; the caller answers it (from the
    ``LAUNCHER_JOB`` environment variable, with psutil: any job's for the doctor, only
    the job being replaced for a launch) and must not raise. A pid it cannot see (gone
    since, or of another pid namespace) should count as not a job's: a GPU is then
    reported busy rather than taken.
    """
    verdicts: dict[int, bool] = {}
    held: dict[str, list[GpuProcess]] = {}
    for process in processes:
        if process.pid not in verdicts:
            verdicts[process.pid] = is_launcher_job(process.pid)
        if not verdicts[process.pid]:
            held.setdefault(process.gpu_uuid, []).append(process)
    busy = []
    for uuid, holders in held.items():
        memory = [p.used_memory_mib for p in holders]
        busy.append(
            BusyGpu(
                uuid=uuid,
                index=holders[0].gpu_index,
                pids=tuple(sorted({p.pid for p in holders})),
                used_memory_mib=None if None in memory else sum(m for m in memory if m is not None),
            )
        )
    return tuple(sorted(busy, key=lambda gpu: (gpu.index is None, gpu.index or 0, gpu.uuid)))


def default_nproc(inventory: GpuInventory, cuda_visible: str | None = None) -> int:
    """Processes per node by default: one per usable device (``usable_devices``), but one
    in all where a device is a MIG device (a CUDA process can use only one MIG device,
    the first it is shown, so a second rank would find none), and 1 where there is none."""
    devices = usable_devices(inventory, cuda_visible)
    if any(device.mig for device in devices):
        return 1
    return max(len(devices), 1)


def foreign_pid(pid: int) -> bool:
    """Whether a pid nvidia-smi reports is no process of this pid namespace: none such here
    (in a container the driver reports the host's pids: nvidia-docker#1483), or one of
    another namespace. False where it cannot tell (no permission to look)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    except FileNotFoundError:
        return True
    except OSError:
        return False


MIG_NOTE = (
    "MIG is on: 1 process per node by default, as a CUDA process can use only one MIG device;"
    " for more, pass --nproc-per-node and give each rank its own MIG- UUID in CUDA_VISIBLE_DEVICES"
)


# ---------------------------------------------------------------------------- helpers


def _gpus_from_proc(proc_driver: Path) -> GpuInventory:
    """The GPUs the kernel driver knows, for a node without ``nvidia-smi``: models and
    uuids only (the uuid is ``????`` until something has used NVML since boot)."""
    if not proc_driver.is_dir():
        return GpuInventory((), f"no nvidia-smi and no {proc_driver}")
    try:
        # Bus ids are fixed-width hex ("0000:07:00.0"): sorted as text, they are in the PCI
        # bus order that nvidia-smi numbers GPUs in.
        entries = sorted(path for path in (proc_driver / "gpus").iterdir() if path.is_dir())
    except OSError:
        entries = []
    gpus: list[Gpu] = []
    for entry in entries:
        try:
            info = parse_proc_information((entry / "information").read_text(encoding="utf-8", errors="replace"))
        except OSError:
            info = {}  # a GPU all the same: it has a directory
        if info.get("GPU Excluded") == "Yes":  # by NVreg_ExcludedGpus: no process can use it
            continue
        uuid = info.get("GPU UUID", "")
        gpus.append(Gpu(index=len(gpus), uuid=uuid if uuid and "?" not in uuid else None, name=info.get("Model", "")))
    if not gpus:
        return GpuInventory((), f"no nvidia-smi, and {proc_driver} lists no GPU")
    return GpuInventory(tuple(gpus), f"{proc_driver} (no nvidia-smi: no memory or MIG details)")


def _with_mig_devices(gpus: tuple[Gpu, ...], listed: dict[int, tuple[MigDevice, ...]]) -> tuple[Gpu, ...]:
    return tuple(replace(gpu, mig_devices=listed.get(gpu.index, ())) if gpu.mig_enabled else gpu for gpu in gpus)


def _index_by_uuid(inventory: GpuInventory | None) -> dict[str, int]:
    """GPU uuids, and MIG device uuids too (to their parent GPU), to GPU indices."""
    found: dict[str, int] = {}
    for gpu in inventory.gpus if inventory else ():
        if gpu.uuid is not None:
            found[gpu.uuid] = gpu.index
        found.update({mig.uuid: gpu.index for mig in gpu.mig_devices})
    return found


def _devices_of(gpu: Gpu, entry: str) -> tuple[Device, ...]:
    if gpu.mig_enabled:
        return tuple(Device(gpu.index, mig.uuid, mig=True) for mig in gpu.mig_devices)
    return (Device(gpu.index, entry),)


def _named_devices(gpus: tuple[Gpu, ...], entry: str) -> tuple[Device, ...]:
    """The devices one entry of ``CUDA_VISIBLE_DEVICES`` names: an index, or a unique
    prefix of a ``GPU-`` or ``MIG-`` UUID (CUDA accepts both); none when it names none."""
    if _WHOLE_NUMBER.fullmatch(entry):
        return next((_devices_of(gpu, entry) for gpu in gpus if gpu.index == int(entry)), ())
    if entry.startswith("GPU-"):
        matches = [gpu for gpu in gpus if gpu.uuid is not None and gpu.uuid.startswith(entry)]
        return _devices_of(matches[0], entry) if len(matches) == 1 else ()
    if entry.startswith("MIG-"):
        migs = [(gpu, mig) for gpu in gpus for mig in gpu.mig_devices if mig.uuid.startswith(entry)]
        return (Device(migs[0][0].index, entry, mig=True),) if len(migs) == 1 else ()
    return ()
