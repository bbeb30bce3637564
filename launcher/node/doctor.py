"""``launcher doctor`` on one node: what a launch needs here, read without starting a job.

Runs ON each node, standard library only, and never imports torch: its version is the
name of its ``dist-info``, CUDA's the text of ``torch/version.py``, NCCL's the
``nvidia-nccl-cu*`` pin in torch's requirements, else ``ncclGetVersion`` of the library. The first node
listens on a rendezvous port until its agent ends (the launching side closes it once
every other node has probed it), so nothing is left behind on any host.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from launcher.node import gpu_health, gpus, network
from launcher.node.errors import NodeError
from launcher.node.preflight import is_launcher_job, process_name, ssh_address
from launcher.protocol import python_env
from launcher.protocol.base import IFNAME_VARIABLES
from launcher.protocol.doctor import Checkup, DiskSpace, GpuReport, NodeReport
from launcher.protocol.messages import Probe
from launcher.protocol.paths import runs_dir

_CUDA = re.compile(r"""^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]""", re.M)
_NCCL_REQUIREMENT = re.compile(r"\s*nvidia-nccl-cu\d+\s*==\s*([0-9][0-9.]*)", re.I)
_GET_VERSION = (
    "import ctypes, sys\n"
    "code = ctypes.c_int()\n"
    "print(ctypes.CDLL(sys.argv[1]).ncclGetVersion(ctypes.byref(code)), code.value)\n"
)
LISTENER = "doctor"
"""The key of doctor's held rendezvous port (``network.hold``)."""


def checkup(request: Checkup) -> NodeReport:
    received = time.time()
    torch, cuda, nccl = torch_versions()
    port: int | None = None
    candidates: list[str] = []
    probes: list[Probe] = []
    if request.listen:
        try:
            port = network.hold(LISTENER, request.port or 0)
        except OSError as exc:
            raise NodeError("port_busy", f"cannot listen on port {request.port}: {exc.strerror or exc}") from None
        candidates = network.candidate_addresses(ssh_address())
        table = network.interface_addresses()
        probes = [Probe(a, port, ok=True, interface=network.interface_of(a, table)) for a in candidates]
    elif request.probe and request.probe_port is not None:
        probes = network.probe(request.probe, request.probe_port, request.probe_timeout)
    gpus_found = gpu_report()
    return NodeReport(
        received=received,
        time=time.time(),
        python_version=python_env.python_version(),
        tmux=tmux_version(),
        torch=torch,
        cuda=cuda,
        nccl=nccl,
        gpus=gpus_found,
        gpu_health=gpu_health.read_health()[0] if gpus_found.count else [],
        disks=[disk_space("working directory", request.cwd), disk_space("state directory", str(_state_root()))],
        port=port,
        candidates=candidates,
        probes=probes,
        preset_env=[name for name in IFNAME_VARIABLES if name in os.environ],
    )


def tmux_version() -> str | None:
    """``3.3a``, or None without tmux (an unusable tmux says so as its version)."""
    if shutil.which("tmux") is None:
        return None
    try:
        done = subprocess.run(["tmux", "-V"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unusable ({exc})"
    return done.stdout.strip().removeprefix("tmux ") or f"unusable (exit {done.returncode})"


def torch_versions() -> tuple[str | None, str | None, str | None]:
    """torch, its CUDA and NCCL versions (None: not there, or a CPU build)."""
    torch = python_env.torch_version()
    if torch is None:
        return None, None, None
    spec = importlib.util.find_spec("torch")  # finds the package; imports nothing
    folders = list(spec.submodule_search_locations or []) if spec else []
    cuda = None
    for folder in folders:
        try:
            text = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        found = _CUDA.search(text)
        cuda = found.group(1) if found else None
        break
    return torch, cuda, nccl_version(folders) if cuda else None


def nccl_version(torch_folders: list[str]) -> str | None:
    """NCCL as torch's own requirements pin it (``nvidia-nccl-cu12==2.21.5``: pip's builds),
    else as the library itself says (NGC and conda builds pin no wheel)."""
    pinned = nccl_from_requirements(_torch_requirements())
    if pinned is not None:
        return pinned
    for library in nccl_libraries(torch_folders):
        version = library_version(library)
        if version is not None:
            return version
    return None


def nccl_from_requirements(requirements: list[str]) -> str | None:
    """The version of ``nvidia-nccl-cu<N>==X`` among a distribution's requirements."""
    for requirement in requirements:
        found = _NCCL_REQUIREMENT.match(requirement)
        if found:
            return found.group(1)
    return None


def nccl_libraries(torch_folders: list[str]) -> list[Path]:
    """``libnccl.so*`` where pip puts it (``site-packages/nvidia/nccl/lib``), then in ``torch/lib``."""
    places = [Path(f).parent / "nvidia" / "nccl" / "lib" for f in torch_folders]
    places += [Path(f) / "lib" for f in torch_folders]
    return [path for place in places for path in sorted(place.glob("libnccl.so*"))]


def library_version(path: Path) -> str | None:
    """``ncclGetVersion`` of the library at ``path`` (it starts no CUDA context), asked in a
    child process so that no library is ever loaded into the agent."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _GET_VERSION, str(path)], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2 or words[0] != "0" or not words[1].isdigit():
        return None
    return decode_nccl_version(int(words[1]))


def decode_nccl_version(code: int) -> str:
    """``NCCL_VERSION_CODE``: major*10000 + minor*100 + patch from 2.9, major*1000 + ... before."""
    major, rest = divmod(code, 10000 if code >= 10000 else 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def _torch_requirements() -> list[str]:
    try:
        return metadata.requires("torch") or []
    except metadata.PackageNotFoundError:
        return []


def gpu_report() -> GpuReport:
    """The GPUs a launch would use here: those of this node's CUDA_VISIBLE_DEVICES, if set."""
    inventory = gpus.list_gpus()
    notes = [f"nvidia-smi: {warning}" for warning in inventory.warnings]
    if inventory.error is not None:
        return GpuReport(count=0, note=f"could not read the GPUs: {inventory.error}")
    if not inventory.gpus:
        return GpuReport(count=0, note=inventory.source)
    allocation = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = gpus.usable_devices(inventory, allocation)
    used = {device.gpu for device in devices}
    if allocation is not None:
        notes.append(f"CUDA_VISIBLE_DEVICES={allocation} here: {len(devices)} device(s)")
    if any(device.mig for device in devices):
        notes.append(gpus.MIG_NOTE)
    found = gpus.gpu_processes(inventory)
    if found.error is not None:
        notes.append(f"who holds the GPUs is unknown: {found.error}")
    busy = [
        f"GPU {gpu.uuid if gpu.index is None else gpu.index}: "
        + ", ".join(f"pid {pid} ({_holder_name(pid)})" for pid in gpu.pids)
        for gpu in gpus.busy_gpus(found.processes, is_launcher_job)
        if gpu.index is None or gpu.index in used
    ]
    mine = [gpu for gpu in inventory.gpus if gpu.index in used]
    return GpuReport(
        count=gpus.default_nproc(inventory, allocation),
        models=sorted({gpu.name for gpu in mine}),
        free_mib=[gpu.memory_free_mib for gpu in mine if gpu.memory_free_mib is not None],
        busy=busy,
        note="; ".join([inventory.source, *notes]),
    )


def _holder_name(pid: int) -> str:
    return "of another pid namespace" if gpus.foreign_pid(pid) else process_name(pid)


def disk_space(what: str, path: str) -> DiskSpace:
    """Free bytes where ``path`` is, or under its nearest existing parent."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        return DiskSpace(what, path, None, exists=os.path.isdir(path), error=exc.strerror or str(exc))
    return DiskSpace(what, path, free, exists=os.path.isdir(path))


def _state_root() -> Path:
    return runs_dir()
