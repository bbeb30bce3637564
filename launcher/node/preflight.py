"""The checks of a prepare that look past the node's disk: its GPUs and the rendezvous.

Runs ON each node. Node 0 starts listening on the rendezvous port here and keeps the
socket until its command runs (``network.hold``); every other node's prepare carries node 0's
addresses and port, and connects to them before answering. Nothing is started, so a
node that cannot reach the rendezvous, or whose GPUs another program holds, fails the
launch while nothing runs anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from launcher.node import gpus, network, nvidia_smi
from launcher.node.errors import NodeError
from launcher.protocol.base import IFNAME_VARIABLES, JOB_MARKER, address_reached
from launcher.protocol.messages import Prepare, Prepared, Probe


def ssh_address() -> str | None:
    """The address the launching machine reached this node at (sshd's ``SSH_CONNECTION``)."""
    return address_reached(os.environ.get("SSH_CONNECTION", ""))


def finish(request: Prepare, run_dir: str, watch_port: int | None = None) -> Prepared:
    """The rest of ``prepare``, after the checks of the working directory and the job."""
    gpu = gpu_checks(request)
    preset = [name for name in IFNAME_VARIABLES if name in os.environ]
    answer = Prepared(
        run_dir=run_dir, gpus=gpu.count, cuda_visible=gpu.cuda_visible, gpu_notes=list(gpu.notes), preset_env=preset
    )
    if request.want_port:
        port = hold_rendezvous(request.job, request.port)
        candidates = network.candidate_addresses(ssh_address())
        table = network.interface_addresses()
        probes = [Probe(a, port, ok=True, interface=network.interface_of(a, table)) for a in candidates]
        return replace(answer, port=port, watch_port=watch_port, candidates=candidates, probes=probes)
    if request.probe and request.probe_port is not None:
        return replace(answer, probes=network.probe(request.probe, request.probe_port, request.probe_timeout))
    return answer


def hold_rendezvous(key: str, port: int | None) -> int:
    """Listen on the rendezvous port (a free one when None) until the command runs."""
    try:
        return network.hold(key, port or 0)
    except OSError as exc:
        raise NodeError(
            "port_busy",
            f"the rendezvous cannot listen on port {port} here: {exc.strerror or exc} (pick another --rdzv-port)",
        ) from None


@dataclass(frozen=True)
class GpuAnswer:
    """What the GPU checks of a prepare found (``Prepared``'s GPU fields)."""

    count: int | None = None
    cuda_visible: str | None = None
    notes: tuple[str, ...] = ()


def gpu_checks(request: Prepare) -> GpuAnswer:
    """Refuse a node without usable GPUs when they are needed, whose GPUs cannot be read,
    or whose GPUs another program holds; the processes its devices make when asked
    (``count_gpus``), and the job's ``CUDA_VISIBLE_DEVICES`` (``--include``, or this
    node's own allocation)."""
    if not (request.count_gpus or request.need_gpus or request.check_gpus is not None or request.pick_gpus is not None):
        return GpuAnswer()
    inventory = gpus.list_gpus()
    if inventory.error is not None:
        raise NodeError(
            "no_gpus",
            f"could not read the GPUs: {inventory.error}"
            " (to launch without reading them: --nproc-per-node N --allow-busy-gpus, and no GPUs in --include)",
        )
    allocation = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = gpus.usable_devices(inventory, allocation)
    if request.need_gpus and not devices:
        given = f", CUDA_VISIBLE_DEVICES={allocation!r}" if allocation is not None else ""
        raise NodeError("no_gpus", f"--nproc-per-node gpu, but this host has no GPU ({inventory.source}{given})")
    notes = [f"nvidia-smi: {warning}" for warning in inventory.warnings]
    # The GPUs the job gets: --include's (a non-empty check_gpus names the same ones).
    picks = request.pick_gpus if request.pick_gpus is not None else (request.check_gpus or None)
    if picks is not None and inventory.gpus:
        devices = picked_devices(devices, picks, allocation)
    narrowed = inventory.gpus and (request.pick_gpus is not None or allocation is not None)
    if request.check_gpus is not None and inventory.gpus:
        notes += busy_check(request, inventory, {device.gpu for device in devices})
    count = None
    if request.count_gpus:
        count = gpus.default_nproc(inventory, allocation)
        if any(device.mig for device in devices):
            notes.append(gpus.MIG_NOTE)
    return GpuAnswer(count, ",".join(d.id for d in devices) if narrowed else None, tuple(notes))


def picked_devices(
    devices: tuple[gpus.Device, ...], picks: list[int], allocation: str | None
) -> tuple[gpus.Device, ...]:
    """``--include``'s GPUs among the node's usable devices. A MIG device is refused unless
    this node's CUDA_VISIBLE_DEVICES names it by UUID: which slice "GPU 0" means is not for
    the launcher to guess."""
    offered = f"its CUDA_VISIBLE_DEVICES={allocation}" if allocation is not None else "nvidia-smi's numbering"
    named = {entry.strip() for entry in (allocation or "").split(",")}
    chosen = []
    for pick in picks:
        if pick >= len(devices):
            raise NodeError("no_gpus", f"--include names GPU {pick}, but this host offers {len(devices)} ({offered})")
        if devices[pick].mig and devices[pick].id not in named:  # a MIG device this node named is by UUID
            raise NodeError(
                "no_gpus",
                f"--include names GPU {pick}, which is MIG device {devices[pick].id} here: MIG devices cannot be"
                " picked by index; leave the GPUs out of --include and set CUDA_VISIBLE_DEVICES to a MIG- UUID on"
                " the host",
            )
        chosen.append(devices[pick])
    return tuple(chosen)


def busy_check(request: Prepare, inventory: gpus.GpuInventory, wanted: set[int]) -> list[str]:
    """Refuse GPUs of ``wanted`` that another program holds; notes on those whose holders
    this node cannot see (pids of another pid namespace: a container)."""
    found = gpus.gpu_processes(inventory)
    if found.error == "no nvidia-smi":  # the GPUs came from /proc: nothing here can say who holds them
        return ["no nvidia-smi here: whether its GPUs are free is not checked"]
    if found.error is not None:
        raise NodeError(
            "gpus_busy",
            f"cannot tell whether the GPUs are free: {found.error} (pass --allow-busy-gpus to skip the check)",
        )
    # Only the job this launch replaces (--force, same name) may keep a GPU: it is being
    # killed. Any other launcher job's process holds it, an orphan of a lost job included.
    replaced = request.job if request.replace else None
    held = gpus.busy_gpus(found.processes, lambda pid: replaced is not None and job_of(pid) == replaced)
    busy, notes = [], []
    memory = {gpu.index: gpu for gpu in inventory.gpus}
    for gpu in held:
        if gpu.index is not None and gpu.index not in wanted:
            continue
        known = memory.get(gpu.index) if gpu.index is not None else None
        if all(gpus.foreign_pid(pid) for pid in gpu.pids) and not _mostly_used(known):
            pids = ", ".join(map(str, gpu.pids))
            notes.append(
                f"GPU {gpu.index}: pid(s) {pids} hold {gpu.used_memory_mib or '?'} MiB, but are not processes of this"
                " pid namespace (a container sees the host's pids): cannot tell whose they are; launching anyway"
            )
        else:
            busy.append(gpu)
    if busy:
        raise NodeError("gpus_busy", busy_message(busy))
    return notes


def _mostly_used(gpu: nvidia_smi.Gpu | None) -> bool:
    """Memory says the GPU is taken: less than half of it free."""
    if gpu is None or gpu.memory_free_mib is None or not gpu.memory_total_mib:
        return False
    return gpu.memory_free_mib < gpu.memory_total_mib / 2


def busy_message(busy: list[gpus.BusyGpu]) -> str:
    parts = []
    for gpu in busy:
        holders = ", ".join(_holder(pid) for pid in gpu.pids)
        parts.append(f"GPU {gpu.uuid if gpu.index is None else gpu.index} is held by {holders}")
    return "; ".join(parts) + " (stop it, or pass --allow-busy-gpus)"


def _holder(pid: int) -> str:
    if gpus.foreign_pid(pid):
        return f"pid {pid}, of another pid namespace"
    job = job_of(pid)
    if job is not None:
        return f"launcher job {job} (pid {pid})"
    return f"pid {pid} ({process_name(pid)}), of no launcher job"


def is_launcher_job(pid: int) -> bool:
    """Whether ``pid`` belongs to a launcher job (its environment has the job marker)."""
    return job_of(pid) is not None


def job_of(pid: int) -> str | None:
    """The launcher job ``pid`` belongs to (its environment's job marker), or None."""
    import psutil

    try:
        job = psutil.Process(pid).environ().get(JOB_MARKER)
    except (psutil.Error, OSError):
        return None
    return None if job is None else str(job)


def process_name(pid: int) -> str:
    import psutil

    try:
        return str(psutil.Process(pid).name())
    except (psutil.Error, OSError):
        return "?"
