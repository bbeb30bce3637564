"""This node's NVIDIA GPUs and who holds them, found without importing torch.

Runs ON each node (inside the node agent), so it uses the standard library only and
imports nothing from ``launcher`` but its own ``nvidia_smi.py`` (the parsers). Everything it returns is a frozen dataclass of plain
fields (``dataclasses.asdict`` then ``json.dumps`` sends it as is). Expected failures (no
``nvidia-smi``, a non-zero exit, a hang, output it cannot read) never raise: the result
is empty and says why.

The GPUs reported are the **physical** GPUs of the node, as ``nvidia-smi`` numbers them
(PCI bus order). ``CUDA_VISIBLE_DEVICES`` is ignored: it is a property of a process, not
of the node, and the launcher sets it per job from this list.

Cost, in ``nvidia-smi`` calls (each one starts the tool and NVML: tens of milliseconds
with persistence mode on, up to seconds without):

- ``list_gpus()``: one ``--query-gpu`` call. ``nvidia-smi -L`` runs as well only when a GPU
  has MIG enabled, because the query cannot list MIG devices. A driver older than R450,
  which does not know the ``mig.mode.current`` field, costs one call more (the query is
  repeated without it). Without ``nvidia-smi``: a few small reads under ``/proc``.
- ``gpu_processes()``: one ``--query-compute-apps`` call.
- ``busy_gpus()`` and ``default_nproc()``: none (they work on results already in hand).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from launcher.node.nvidia_smi import (
    APP_FIELDS,
    Gpu,
    GpuProcess,
    MigDevice,
    UnreadableOutput,
    parse_compute_apps,
    parse_gpu_list,
    parse_gpu_query,
    parse_proc_information,
    text_lines,
)

DEFAULT_TIMEOUT_S = 10.0
"""How long one ``nvidia-smi`` call may take. A GPU that fell off the bus can hang it."""

PROC_DRIVER = Path("/proc/driver/nvidia")
"""Where the kernel driver lists the GPUs: the fallback when ``nvidia-smi`` is absent."""

_GPU_FIELDS = ("index", "uuid", "name", "memory.total", "memory.used", "memory.free")
_MIG_FIELD = "mig.mode.current"  # unknown to drivers before R450
_KILLED_GRACE_S = 1.0


@dataclass(frozen=True)
class GpuInventory:
    """The node's GPUs, and where the list came from."""

    gpus: tuple[Gpu, ...]
    source: str
    """``nvidia-smi`` or ``/proc/driver/nvidia (...)`` when GPUs were found; when none
    were, why not, e.g. ``nvidia-smi failed: Failed to initialize NVML: Driver/library
    version mismatch (exit status 18)``."""


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


def list_gpus(timeout: float = DEFAULT_TIMEOUT_S, proc_driver: Path = PROC_DRIVER) -> GpuInventory:
    """The node's physical GPUs (``CUDA_VISIBLE_DEVICES`` is ignored); see the module's
    docstring for what each call costs."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return _gpus_from_proc(proc_driver)
    query = [f"--query-gpu={','.join((*_GPU_FIELDS, _MIG_FIELD))}", "--format=csv,noheader,nounits"]
    output, why = _run_nvidia_smi(executable, query, timeout)
    with_mig = True
    if why is not None and _MIG_FIELD in why:  # "Field "mig.mode.current" is not a valid field to query."
        query[0] = f"--query-gpu={','.join(_GPU_FIELDS)}"
        output, why = _run_nvidia_smi(executable, query, timeout)
        with_mig = False
    if why is not None:
        return GpuInventory((), why)
    try:
        gpus = parse_gpu_query(output, with_mig)
    except UnreadableOutput as exc:
        return GpuInventory((), f"nvidia-smi --query-gpu: {exc}")
    if not gpus:
        return GpuInventory((), "nvidia-smi listed no GPU")
    if not any(gpu.mig_enabled for gpu in gpus):
        return GpuInventory(gpus, "nvidia-smi")
    listing, why = _run_nvidia_smi(executable, ["-L"], timeout)
    if why is None:
        try:
            return GpuInventory(_with_mig_devices(gpus, parse_gpu_list(listing)), "nvidia-smi")
        except UnreadableOutput as exc:
            why = f"nvidia-smi -L: {exc}"
    return GpuInventory(gpus, f"nvidia-smi (its MIG devices are unknown: {why})")


def gpu_processes(inventory: GpuInventory | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> GpuProcesses:
    """The processes holding GPU memory on this node; ``inventory`` (if given) maps each
    GPU's uuid to its index."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return GpuProcesses((), "no nvidia-smi")
    query = [f"--query-compute-apps={','.join(APP_FIELDS)}", "--format=csv,noheader,nounits"]
    output, why = _run_nvidia_smi(executable, query, timeout)
    if why is not None:
        return GpuProcesses((), why)
    try:
        return GpuProcesses(parse_compute_apps(output, _index_by_uuid(inventory)))
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


def default_nproc(inventory: GpuInventory) -> int:
    """Processes per node by default: one per GPU, one per MIG device of a GPU in MIG
    mode (a MIG GPU without devices gives none), and 1 where that makes none."""
    count = sum(len(gpu.mig_devices) if gpu.mig_enabled else 1 for gpu in inventory.gpus)
    return max(count, 1)


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


def _run_nvidia_smi(executable: str, args: list[str], timeout: float) -> tuple[str, str | None]:
    """``(stdout, None)`` when nvidia-smi exits 0, else ``("", why)`` in one line."""
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
        return "", f"nvidia-smi could not start: {exc.strerror or exc}"
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return "", f"nvidia-smi did not answer within {timeout:g} s{_kill(process)}"
    if process.returncode == 0:
        return stdout, None
    # nvidia-smi prints its errors on stdout, as often as not.
    message = next((line.strip() for line in (*text_lines(stderr), *text_lines(stdout))), "")[:300]
    if message == "No devices were found":  # a node with the driver and no GPU: not a failure
        return "", "nvidia-smi: No devices were found"
    return "", f"nvidia-smi failed: {message or 'no message'} (exit status {process.returncode})"


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
