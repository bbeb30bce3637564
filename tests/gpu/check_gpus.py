"""GPU discovery on a machine with NVIDIA GPUs: ``python3 tests/gpu/check_gpus.py``.

Plain Python, no pytest. Prints ``list_gpus()`` and ``gpu_processes()`` as JSON, with how
long each took, and checks the GPU count against ``torch.cuda.device_count()`` when torch
is importable. torch runs in a child process without ``CUDA_VISIBLE_DEVICES``, because
``list_gpus()`` reports the physical GPUs. Where CUDA works, it then launches through
launcher on localhost (``launch_checks.py``): a 1-GPU NCCL job that must run on cuda:0,
a job with the default processes (one per GPU), a launch refused because a stray process
holds GPU 0 (and let through with ``--allow-busy-gpus``), and a kill that nvidia-smi must
show freed the GPU. Needs tmux and launcher's dependencies. Exits 1 on any problem, else 0.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's launcher
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_checks

from launcher.node import gpus

TORCH_COUNT = "import torch; print(torch.cuda.device_count())"


def torch_device_count() -> int | None:
    """What torch sees with every GPU visible; None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run([sys.executable, "-c", TORCH_COUNT], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"FAIL: torch.cuda.device_count() failed:\n{done.stderr}")
    return int(done.stdout.split()[-1])


def main() -> int:
    started = time.perf_counter()
    inventory = gpus.list_gpus()
    list_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    processes = gpus.gpu_processes(inventory)
    processes_ms = (time.perf_counter() - started) * 1000
    report = {
        "list_gpus": dataclasses.asdict(inventory),
        "list_gpus_ms": round(list_ms, 1),
        "gpu_processes": dataclasses.asdict(processes),
        "gpu_processes_ms": round(processes_ms, 1),
        "default_nproc": gpus.default_nproc(inventory),
        "busy_gpus (every process counted as not a launcher job)": [
            dataclasses.asdict(busy) for busy in gpus.busy_gpus(processes.processes, lambda pid: False)
        ],
    }
    print(json.dumps(report, indent=2))

    problems = []
    if processes.error is not None and inventory.gpus:
        problems.append(f"gpu_processes() failed on a machine with GPUs: {processes.error}")
    torch_count = torch_device_count()
    if torch_count is None:
        print("torch is not importable: the count is not checked")
    else:
        mig = any(gpu.mig_enabled for gpu in inventory.gpus)
        plain = sum(not gpu.mig_enabled for gpu in inventory.gpus)
        print(
            f"torch.cuda.device_count() = {torch_count}, list_gpus() found {len(inventory.gpus)} ({plain} without MIG)"
        )
        if not mig and torch_count != len(inventory.gpus):
            problems.append(f"torch sees {torch_count} GPU(s), list_gpus() {len(inventory.gpus)}: {inventory.source}")
        # With MIG, how many devices CUDA enumerates depends on the driver and on
        # CUDA_VISIBLE_DEVICES: only a range can be checked.
        if mig and not plain <= torch_count <= gpus.default_nproc(inventory):
            problems.append(f"torch sees {torch_count} device(s), outside {plain}..{gpus.default_nproc(inventory)}")
    if inventory.gpus and torch_count:
        import launch_checks  # the launches through launcher: a 1-GPU NCCL job, a kill verified by nvidia-smi

        problems += launch_checks.run_all(gpus.default_nproc(inventory))
    else:
        print("no CUDA GPU here: the launches through launcher are not run")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
