"""Launches through launcher on this machine's GPUs (localhost), for ``check_gpus.py``.

Each check returns a list of problems (empty: passed) and prints what it saw. They run
the real CLI (``python -m launcher``) with a private state directory and tmux socket, so
nothing of the user's own jobs or tmux server is touched, and kill what they start.

- ``nccl_job``: a 1-GPU job (``examples/distributed_sum.py``, NCCL) runs on ``cuda:0``.
- ``default_nproc``: without ``--nproc-per-node`` the job runs one process per GPU.
- ``busy_gpu_refused``: a process of no launcher job holding GPU 0 makes a launch on it
  fail naming the GPU and the pid; ``--allow-busy-gpus`` goes anyway.
- ``kill_frees_gpu``: a job holding GPU memory is killed; ``nvidia-smi`` then lists none
  of its processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
HOLD_GPU = """\
import os, sys, time, torch
device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
block = torch.empty(256 << 20, dtype=torch.uint8, device=device)
print("holding", os.getpid(), flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
"""


class Launcher:
    """The CLI with a state directory and tmux socket of its own."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lgpu-"))
        (self.root / "state").mkdir()
        self.script = self.root / "hold_gpu.py"
        self.script.write_text(HOLD_GPU)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "XDG_STATE_HOME": str(self.root / "state"),
            "LAUNCHER_TMUX_SOCKET": str(self.root / "tmux.sock"),
        }
        self.jobs: list[str] = []

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "launcher", *args]
        done = subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        print(f"$ launcher {' '.join(args)}  -> exit {done.returncode}")
        for line in (done.stdout + done.stderr).strip().splitlines()[-12:]:
            print(f"    {line}")
        return done

    def name(self, prefix: str) -> str:
        job = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.jobs.append(job)
        return job

    def close(self) -> None:
        for job in self.jobs:
            self("kill", "--grace", "0", job, timeout=120)
        subprocess.run(["tmux", "-S", str(self.root / "tmux.sock"), "kill-server"], capture_output=True, check=False)


def compute_pids() -> set[int]:
    """Pids nvidia-smi lists as holding GPU memory."""
    query = ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"]
    listed = subprocess.run(query, capture_output=True, text=True, timeout=60, check=False).stdout
    return {int(word) for word in listed.split() if word.isdigit()}


def wait_until(what: str, check: Callable[[], T], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def nccl_job(launcher: Launcher) -> list[str]:
    job = launcher.name("gpu-nccl")
    done = launcher(
        "launch", "--name", job, "--nproc-per-node", "1", "-e", "CUDA_VISIBLE_DEVICES=0", "--wait",
        "examples/distributed_sum.py",
    )  # fmt: skip
    logs = launcher("logs", job).stdout
    problems = []
    if done.returncode != 0:
        problems.append(f"the 1-GPU NCCL job failed (exit {done.returncode})")
    if "device=cuda:0 sum=1 ok" not in logs:
        problems.append("the 1-GPU job did not report device=cuda:0 sum=1 ok")
    return problems


def default_nproc(launcher: Launcher, gpu_count: int) -> list[str]:
    job = launcher.name("gpu-default")
    done = launcher("launch", "--name", job, "--wait", "examples/distributed_sum.py", timeout=600)
    logs = launcher("logs", job).stdout
    if done.returncode != 0 or f"world_size={gpu_count} device=cuda" not in logs:
        return [f"without --nproc-per-node the job did not run {gpu_count} process(es) on the GPUs"]
    return []


def busy_gpu_refused(launcher: Launcher) -> list[str]:
    env = {**launcher.env, "CUDA_VISIBLE_DEVICES": "0"}
    stray = subprocess.Popen([sys.executable, str(launcher.script), "600"], env=env, stdout=subprocess.PIPE, text=True)
    problems = []
    try:
        wait_until("the stray process to hold GPU memory", lambda: stray.pid in compute_pids())
        job = launcher.name("gpu-busy")
        refused = launcher("launch", "--name", job, "--nproc-per-node", "1", "examples/distributed_sum.py")
        if refused.returncode == 0 or f"pid {stray.pid}" not in refused.stderr or "GPU 0" not in refused.stderr:
            problems.append("a launch onto a GPU held by a process of no job was not refused naming GPU 0 and its pid")
        allowed = launcher(
            "launch", "--name", launcher.name("gpu-allowed"), "--nproc-per-node", "1", "--allow-busy-gpus", "--wait",
            "-e", "CUDA_VISIBLE_DEVICES=0", "examples/distributed_sum.py",
        )  # fmt: skip
        if allowed.returncode != 0:
            problems.append("--allow-busy-gpus did not let the job run")
        doctor = launcher("doctor", "--json")
        if f"pid {stray.pid}" not in doctor.stdout or doctor.returncode == 0:
            problems.append("doctor did not flag the GPU held by a process of no job")
    finally:
        stray.kill()
        stray.wait()
    return problems


def kill_frees_gpu(launcher: Launcher) -> list[str]:
    job = launcher.name("gpu-kill")
    started = launcher(
        "launch", "--name", job, "--nproc-per-node", "1", "-e", "CUDA_VISIBLE_DEVICES=0", "--runner", "python",
        str(launcher.script), "600",
    )  # fmt: skip
    if started.returncode != 0:
        return ["the GPU-holding job did not start"]
    try:
        held = wait_until("the job to hold GPU memory", lambda: job_gpu_pids(job))
    except TimeoutError as exc:
        return [str(exc)]
    print(f"    job {job} holds GPU memory in pid(s) {sorted(held)}")
    killed = launcher("kill", "--grace", "5", job)
    time.sleep(1)
    left = compute_pids() & held
    problems = []
    if killed.returncode != 0:
        problems.append(f"kill did not verify the job gone (exit {killed.returncode})")
    if left:
        problems.append(f"nvidia-smi still lists GPU memory held by {sorted(left)} after the kill")
    return problems


def job_gpu_pids(job: str) -> set[int]:
    """Pids holding GPU memory whose environment says they are of ``job``."""
    found = set()
    for pid in compute_pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LAUNCHER_JOB={job}".encode() in environ:
            found.add(pid)
    return found


def run_all(gpu_count: int) -> list[str]:
    launcher = Launcher()
    problems: list[str] = []
    try:
        for name, check in (
            ("1-GPU NCCL job", lambda: nccl_job(launcher)),
            ("one process per GPU by default", lambda: default_nproc(launcher, gpu_count)),
            ("busy GPU refused", lambda: busy_gpu_refused(launcher)),
            ("kill frees the GPU", lambda: kill_frees_gpu(launcher)),
        ):
            print(f"\n== {name}")
            found = check()
            print("   " + ("; ".join(found) if found else "passed"))
            problems += found
    finally:
        launcher.close()
    return problems
