"""GPU health and speed (issue 22), for ``check_gpus.py``: what ``launcher doctor`` reads
with ``nvidia-smi -q`` on each GPU, a bf16 matmul on each GPU, and the doctor's bandwidth
job over NCCL on this machine alone. Each check ``OK``, ``FAIL`` or ``SKIP`` with why; a GPU
that is unhealthy is named in the detail (a finding about the hardware, not a failed check).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from launch_checks import Result, fail, ok, skip

from launcher.node import gpu_health
from launcher.protocol.doctor import BANDWIDTH_MARKER, BANDWIDTH_MODULE

SPEEDS = "import json; from launcher.bandwidth_job import gpu_speeds; print(json.dumps(gpu_speeds()))"


def run_all(gpu_count: int) -> list[tuple[str, Result]]:
    names = ["nvidia-smi -q reads each GPU's health", "a bf16 matmul on each GPU", "the bandwidth job over NCCL"]
    if gpu_count == 0:
        return [(name, skip("no NVIDIA GPU here")) for name in names]
    return [(names[0], health(gpu_count)), (names[1], speeds(gpu_count)), (names[2], bandwidth_job())]


def health(gpu_count: int) -> Result:
    found, error = gpu_health.read_health()
    if error is not None:
        return fail(error)
    if len(found) != gpu_count:
        return fail(f"{len(found)} GPU(s) read from nvidia-smi -q, {gpu_count} listed")
    said = [f"GPU {g.index} {g.name}: {'; '.join(g.errors + g.warnings) or 'healthy'}" for g in found]
    clocks = [f"SM {g.sm_clock_mhz}/{g.max_sm_clock_mhz} MHz" for g in found[:1]]
    return ok(" | ".join(said + clocks))


def speeds(gpu_count: int) -> Result:
    done = subprocess.run([sys.executable, "-c", SPEEDS], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return fail((done.stderr.strip().splitlines() or ["no output"])[-1])
    found = json.loads(done.stdout)
    if len(found) != gpu_count or any(g["tflops"] <= 0 for g in found):
        return fail(f"expected {gpu_count} GPU(s) with a positive figure: {found}")
    return ok(", ".join(f"GPU {g['index']} {g['tflops']:.0f} TFLOPS" for g in found))


def bandwidth_job() -> Result:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "0", "NNODES": "1"}
    argv = [sys.executable, "-m", BANDWIDTH_MODULE, "--seconds", "120"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(BANDWIDTH_MARKER)]
    if done.returncode != 0 or not lines:
        return fail((done.stderr.strip().splitlines() or ["no figures"])[-1])
    figures = json.loads(lines[0].removeprefix(BANDWIDTH_MARKER))
    if figures["backend"] != "nccl" or not figures.get("gpus"):
        return fail(f"backend {figures['backend']}, GPUs {figures.get('gpus')}")
    largest = figures["allreduce"][-1]
    return ok(f"all-reduce {largest['bytes'] >> 10} KiB in {largest['seconds'] * 1e6:.0f} us on 1 host")
