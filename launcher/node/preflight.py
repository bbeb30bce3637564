"""The checks of a prepare that look past the node's disk: its GPUs and the rendezvous.

Runs ON each node. Node 0 starts listening on the rendezvous port here and keeps the
socket until its start (``network.hold``); every other node's prepare carries node 0's
addresses and port, and connects to them before answering. Nothing is started, so a
node that cannot reach the rendezvous, or whose GPUs another program holds, fails the
launch while nothing runs anywhere.
"""

from __future__ import annotations

import os

from launcher.node import gpus, network
from launcher.node.errors import NodeError
from launcher.protocol.base import IFNAME_VARIABLES, JOB_MARKER, address_reached
from launcher.protocol.messages import Prepare, Prepared, Probe


def ssh_address() -> str | None:
    """The address the launching machine reached this node at (sshd's ``SSH_CONNECTION``)."""
    return address_reached(os.environ.get("SSH_CONNECTION", ""))


def finish(request: Prepare, run_dir: str, watch_port: int | None = None) -> Prepared:
    """The rest of ``prepare``, after the checks of the working directory and the job."""
    gpu_count = gpu_checks(request)
    preset = [name for name in IFNAME_VARIABLES if name in os.environ]
    if request.want_port:
        port = hold_rendezvous(request.job, request.port)
        candidates = network.candidate_addresses(ssh_address())
        table = network.interface_addresses()
        mine = [Probe(a, port, ok=True, interface=network.interface_of(a, table)) for a in candidates]
        return Prepared(
            run_dir=run_dir,
            port=port,
            watch_port=watch_port,
            candidates=candidates,
            probes=mine,
            gpus=gpu_count,
            preset_env=preset,
        )
    probes: list[Probe] = []
    if request.probe and request.probe_port is not None:
        probes = network.probe(request.probe, request.probe_port, request.probe_timeout)
    return Prepared(run_dir=run_dir, probes=probes, gpus=gpu_count, preset_env=preset)


def hold_rendezvous(key: str, port: int | None) -> int:
    """Listen on the rendezvous port (a free one when None) until the start."""
    try:
        return network.hold(key, port or 0)
    except OSError as exc:
        raise NodeError(
            "port_busy",
            f"the rendezvous cannot listen on port {port} here: {exc.strerror or exc} (pick another --rdzv-port)",
        ) from None


def gpu_checks(request: Prepare) -> int | None:
    """Refuse a node without GPUs when they are needed, or whose GPUs another program
    holds; the processes its GPUs make when asked (``count_gpus``)."""
    if not (request.count_gpus or request.need_gpus or request.check_gpus is not None):
        return None
    inventory = gpus.list_gpus()
    if request.need_gpus and not inventory.gpus:
        raise NodeError("no_gpus", f"--nproc-per-node gpu, but this host has no GPU ({inventory.source})")
    if request.check_gpus is not None and inventory.gpus:
        wanted = set(request.check_gpus)
        # Only the job this launch replaces (--force, same name) may keep a GPU: it is being
        # killed. Any other launcher job's process holds it, an orphan of a lost job included.
        replaced = request.job if request.replace else None
        held = gpus.busy_gpus(
            gpus.gpu_processes(inventory).processes, lambda pid: replaced is not None and job_of(pid) == replaced
        )
        busy = [gpu for gpu in held if not wanted or gpu.index is None or gpu.index in wanted]
        if busy:
            raise NodeError("gpus_busy", busy_message(busy))
    return gpus.default_nproc(inventory) if request.count_gpus else None


def busy_message(busy: list[gpus.BusyGpu]) -> str:
    parts = []
    for gpu in busy:
        holders = ", ".join(_holder(pid) for pid in gpu.pids)
        parts.append(f"GPU {gpu.uuid if gpu.index is None else gpu.index} is held by {holders}")
    return "; ".join(parts) + " (stop it, or pass --allow-busy-gpus)"


def _holder(pid: int) -> str:
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
