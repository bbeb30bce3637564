"""``launcher doctor`` on one node: what a launch needs here, read without starting a job.

Runs ON each node, standard library only, and never imports torch: its version is the
name of its ``dist-info``, CUDA's the text of ``torch/version.py``, NCCL's the version of
the ``nvidia-nccl`` wheel (or the name of the library file torch ships). The first node
listens on a rendezvous port until its agent ends (the launching side closes it once
every other node has probed it), so nothing is left behind on any host.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from launcher.node import gpus, network
from launcher.node.errors import NodeError
from launcher.node.preflight import is_launcher_job, process_name, ssh_address
from launcher.protocol import python_env
from launcher.protocol.base import IFNAME_VARIABLES
from launcher.protocol.doctor import Checkup, DiskSpace, GpuReport, NodeReport
from launcher.protocol.messages import Probe
from launcher.protocol.paths import runs_dir

_CUDA = re.compile(r"""^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]""", re.M)
_NCCL_WHEELS = ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11")
_NCCL_FILE = re.compile(r"libnccl\.so\.(\d+(?:\.\d+)*)")
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
    return NodeReport(
        received=received,
        time=time.time(),
        python_version=python_env.python_version(),
        tmux=tmux_version(),
        torch=torch,
        cuda=cuda,
        nccl=nccl,
        gpus=gpu_report(),
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
    from importlib import metadata

    for wheel in _NCCL_WHEELS:
        try:
            return metadata.version(wheel)
        except metadata.PackageNotFoundError:
            continue
    for folder in torch_folders:
        for path in sorted((Path(folder) / "lib").glob("libnccl.so*")):
            found = _NCCL_FILE.search(path.name)
            return found.group(1) if found else path.name
    return None


def gpu_report() -> GpuReport:
    inventory = gpus.list_gpus()
    if not inventory.gpus:
        return GpuReport(count=0, note=inventory.source)
    held = gpus.busy_gpus(gpus.gpu_processes(inventory).processes, is_launcher_job)
    busy = [
        f"GPU {gpu.uuid if gpu.index is None else gpu.index}: "
        + ", ".join(f"pid {pid} ({process_name(pid)})" for pid in gpu.pids)
        for gpu in held
    ]
    free = [gpu.memory_free_mib for gpu in inventory.gpus if gpu.memory_free_mib is not None]
    return GpuReport(
        count=gpus.default_nproc(inventory),
        models=sorted({gpu.name for gpu in inventory.gpus}),
        free_mib=free,
        busy=busy,
        note=inventory.source,
    )


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
