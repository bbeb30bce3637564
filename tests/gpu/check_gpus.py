"""GPU discovery and launches on a machine with NVIDIA GPUs: ``python3 tests/gpu/check_gpus.py``.

Plain Python, no pytest. Prints ``list_gpus()`` and ``gpu_processes()`` as JSON, with how
long each took, then one line per check: ``OK``, ``FAIL`` or ``SKIP`` with why. It checks
the launcher's device count against ``torch.cuda.device_count()`` (in a child process, in
this machine's own environment: a scheduler's CUDA_VISIBLE_DEVICES narrows both), and
where CUDA works it launches through launcher on localhost (``launch_checks.py``): one
process per usable GPU, a 1-GPU NCCL job, ``--include`` (2+ GPUs), MIG (where present), a
busy GPU and a kill (also in a container). What it cannot check here it SKIPs, naming it;
it never prints a traceback. Needs tmux and launcher's dependencies. Exits 1 on a FAIL,
else 0 (all SKIP included: without a GPU or torch it says so and exits 0).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's launcher
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_checks

import launch_checks
from launch_checks import Result, fail, ok, skip

from launcher.node import gpus

TORCH_COUNT = "import torch; print(torch.version.cuda, torch.cuda.device_count())"
LAUNCHES = [
    "one process per usable GPU by default",
    "a 1-GPU NCCL job on cuda:0",
    "--include picks nvidia-smi's GPU 1",
    "MIG",
    "a busy GPU",
    "kill frees the GPU",
]


def torch_device_count() -> tuple[int | None, str]:
    """What torch sees in this machine's environment, or None and why not."""
    if importlib.util.find_spec("torch") is None:
        return None, "torch is not installed"
    try:
        done = subprocess.run([sys.executable, "-c", TORCH_COUNT], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None, "torch.cuda.device_count() did not answer within 300 s"
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"torch.cuda.device_count() failed: {last}"
    if words[0] == "None":
        return None, "torch is a CPU-only build"
    return int(words[1]), ""


def count_check(inventory: gpus.GpuInventory, torch_count: int) -> Result:
    allocation = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = gpus.usable_devices(inventory, allocation)
    expected = gpus.default_nproc(inventory, allocation)
    if any(device.mig for device in devices):
        # CUDA enumerates one MIG device per process: the launcher's 1 is what one rank can use.
        if torch_count < 1 or expected != 1:
            return fail(f"MIG: torch sees {torch_count} device(s), the launcher counts {expected} (wanted 1)")
        return ok(f"MIG: 1 process (torch sees {torch_count})")
    if torch_count != len(devices):
        return fail(f"torch sees {torch_count} GPU(s), the launcher {len(devices)}: {inventory.source}")
    return ok(f"{torch_count} GPU(s), as torch sees them")


def main() -> int:
    started = time.perf_counter()
    inventory = gpus.list_gpus()
    list_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    processes = gpus.gpu_processes(inventory)
    processes_ms = (time.perf_counter() - started) * 1000
    allocation = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(
        json.dumps(
            {
                "list_gpus": dataclasses.asdict(inventory),
                "list_gpus_ms": round(list_ms, 1),
                "gpu_processes": dataclasses.asdict(processes),
                "gpu_processes_ms": round(processes_ms, 1),
                "CUDA_VISIBLE_DEVICES": allocation,
                "usable_devices": [dataclasses.asdict(d) for d in gpus.usable_devices(inventory, allocation)],
                "default_nproc": gpus.default_nproc(inventory, allocation),
            },
            indent=2,
        )
    )
    results: list[tuple[str, Result]] = []
    if inventory.error is not None:
        results.append(("nvidia-smi reads the GPUs", fail(inventory.error)))
    elif not inventory.gpus:
        results.append(("nvidia-smi reads the GPUs", skip(f"no NVIDIA GPU here ({inventory.source})")))
    else:
        results.append(("nvidia-smi reads the GPUs", ok(f"{len(inventory.gpus)} GPU(s) in {list_ms:.0f} ms")))
        if processes.error is not None:
            results.append(("nvidia-smi lists the GPU processes", fail(processes.error)))
    unread = "no NVIDIA GPU here" if inventory.error is None else "the GPUs could not be read"
    torch_count, why = torch_device_count() if inventory.gpus else (None, unread)
    if torch_count is None:
        results.append(("the count matches torch's", skip(why)))
    else:
        results.append(("the count matches torch's", count_check(inventory, torch_count)))
    if not torch_count:
        results += [(name, skip(why or "torch sees no CUDA device")) for name in LAUNCHES]
    elif shutil.which("tmux") is None:
        results += [(name, skip("no tmux here: the launcher cannot start jobs")) for name in LAUNCHES]
    else:
        results += launch_checks.run_all(gpus.default_nproc(inventory, allocation))
    results += importlib.import_module("health_check").run_all(len(inventory.gpus)) if torch_count else []
    results += importlib.import_module("nccl_hang_check").run_all(torch_count or 0) if torch_count else []
    print()
    for name, result in results:
        print(f"{result.status:<4} {name}" + (f": {result.detail}" if result.detail else ""))
    failed = [name for name, result in results if result.status == "FAIL"]
    skipped = [name for name, result in results if result.status == "SKIP"]
    if failed:
        print(f"FAIL: {len(failed)} check(s) failed")
    elif len(skipped) == len(results):
        print("SKIP: nothing could be checked on this machine (see the reasons above)")
    else:
        print(f"OK: {len(results) - len(skipped)} check(s) passed, {len(skipped)} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nFAIL: interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 (never a traceback: one line, and a FAIL)
        print(f"FAIL: {type(exc).__name__}: {exc}")
        sys.exit(1)
