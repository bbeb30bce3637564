"""Launches through launcher on this machine's GPUs (localhost), for ``check_gpus.py``.

Each check returns a ``Result``: OK, FAIL or SKIP with one line saying why, and prints
what it saw. They run the real CLI (``python -m launcher``) with a private state
directory and tmux socket, so nothing of the user's own jobs or tmux server is touched,
and kill what they start. No check pins ``CUDA_VISIBLE_DEVICES`` for a job: the device
choice under test is the launcher's own (this machine's CUDA_VISIBLE_DEVICES, if a
scheduler set one, is respected as the launcher respects it).

- ``default_nproc``: without ``--nproc-per-node``, one process per usable GPU (1 with
  MIG), each on ``cuda:<local_rank>``, NCCL all-reducing.
- ``one_gpu_job``: ``--nproc-per-node 1`` runs on ``cuda:0``.
- ``include``: ``--include localhost:1`` gives the job exactly the GPU nvidia-smi calls 1
  (by UUID, so CUDA's numbering is checked against nvidia-smi's); needs 2+ GPUs.
- ``mig``: on a GPU in MIG mode, ``--include`` by index is refused.
- ``busy_gpu``: a process of no launcher job holding the first GPU makes a launch fail
  naming it; in a container (nvidia-smi lists the host's pids) the launch goes on with a
  note instead. ``--allow-busy-gpus`` goes anyway; doctor flags the GPU.
- ``kill_frees_gpu``: a job holding GPU memory is killed; nvidia-smi then lists none of
  its processes, or (in a container) kill says it could not verify.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's launcher

from launcher.node import gpus

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
HOLD_GPU = """\
import os, sys, time, torch
device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
block = torch.empty(256 << 20, dtype=torch.uint8, device=device)
print("holding", os.getpid(), flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
"""
WHICH_GPU = """\
import os, torch
props = torch.cuda.get_device_properties(0)
print(f"which_gpu count={torch.cuda.device_count()} uuid={getattr(props, 'uuid', None)}"
      f" cvd={os.environ.get('CUDA_VISIBLE_DEVICES')} order={os.environ.get('CUDA_DEVICE_ORDER')}", flush=True)
"""


@dataclass(frozen=True)
class Result:
    status: Literal["OK", "FAIL", "SKIP"]
    detail: str = ""


def ok(detail: str = "") -> Result:
    return Result("OK", detail)


def fail(detail: str) -> Result:
    return Result("FAIL", detail)


def skip(detail: str) -> Result:
    return Result("SKIP", detail)


class Launcher:
    """The CLI with a state directory and tmux socket of its own."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lgpu-"))
        (self.root / "state").mkdir()
        for name, text in (("hold_gpu.py", HOLD_GPU), ("which_gpu.py", WHICH_GPU)):
            (self.root / name).write_text(text)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "XDG_STATE_HOME": str(self.root / "state"),
            "LAUNCHER_TMUX_SOCKET": str(self.root / "tmux.sock"),
        }
        self.jobs: list[str] = []

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "launcher", *args]
        try:
            done = subprocess.run(
                argv, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            done = subprocess.CompletedProcess(argv, 124, "", f"launcher {args[0]} did not end within {timeout:g} s")
        print(f"$ launcher {' '.join(args)}  -> exit {done.returncode}")
        for line in (done.stdout + done.stderr).strip().splitlines()[-12:]:
            print(f"    {line}")
        return done

    def name(self, prefix: str) -> str:
        job = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.jobs.append(job)
        return job

    def logs(self, job: str) -> str:
        return self("logs", job).stdout

    def close(self) -> None:
        for job in self.jobs:
            self("kill", "--grace", "0", job, timeout=120)
        subprocess.run(["tmux", "-S", str(self.root / "tmux.sock"), "kill-server"], capture_output=True, check=False)


def compute_pids() -> set[int]:
    """Pids nvidia-smi lists as holding GPU memory (as the driver numbers them)."""
    return {process.pid for process in gpus.gpu_processes().processes}


def wait_until(what: str, check: Callable[[], T], timeout: float = 120) -> T:
    """``check()``'s first true value; ``TimeoutError`` after ``timeout`` (callers catch it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def usable() -> tuple[gpus.GpuInventory, tuple[gpus.Device, ...]]:
    inventory = gpus.list_gpus()
    return inventory, gpus.usable_devices(inventory, os.environ.get("CUDA_VISIBLE_DEVICES"))


def default_nproc(launcher: Launcher, expected: int) -> Result:
    job = launcher.name("gpu-default")
    done = launcher("launch", "--name", job, "--wait", "examples/distributed_sum.py", timeout=600)
    logs = launcher.logs(job)
    lines = [line for line in logs.splitlines() if "distributed_sum:" in line and " ok" in line]
    wanted = [f"local_rank={r} world_size={expected} device=cuda:{r} sum=" for r in range(expected)]
    if done.returncode != 0 or not all(any(w in line for line in lines) for w in wanted):
        return fail(f"without --nproc-per-node the job did not run {expected} process(es), each on cuda:<local_rank>")
    return ok(f"{expected} process(es), each on its own GPU, NCCL all-reduce right")


def one_gpu_job(launcher: Launcher) -> Result:
    job = launcher.name("gpu-one")
    done = launcher("launch", "--name", job, "--nproc-per-node", "1", "--wait", "examples/distributed_sum.py")
    if done.returncode != 0 or "device=cuda:0 sum=1 ok" not in launcher.logs(job):
        return fail(f"the 1-GPU NCCL job did not report device=cuda:0 sum=1 ok (exit {done.returncode})")
    return ok("device=cuda:0 sum=1 ok")


def include(launcher: Launcher) -> Result:
    inventory, devices = usable()
    if len(devices) < 2:
        return skip(f"--include localhost:1 needs 2+ GPUs; this machine offers {len(devices)}")
    if any(device.mig for device in devices):
        return skip("--include by index is refused on MIG devices (see the MIG check)")
    job = launcher.name("gpu-include")
    done = launcher("launch", "--name", job, "--include", "localhost:1", "--wait", "--runner", "python",
                    str(launcher.root / "which_gpu.py"))  # fmt: skip
    line = next((line for line in launcher.logs(job).splitlines() if "which_gpu count=" in line), "")
    gpu = next(g for g in inventory.gpus if g.index == devices[1].gpu)
    uuid_seen = line.split("uuid=")[1].split()[0] if "uuid=" in line else "None"
    if done.returncode != 0 or "count=1 " not in line or f"cvd={devices[1].id} " not in line:
        return fail(f"--include localhost:1 did not give the job one GPU, {devices[1].id}: {line or 'no output'}")
    if uuid_seen == "None" or gpu.uuid is None:
        return ok(f"one GPU, CUDA_VISIBLE_DEVICES={devices[1].id} (this torch does not say the device's UUID)")
    if uuid_seen.removeprefix("GPU-") != gpu.uuid.removeprefix("GPU-"):
        return fail(f"the job's cuda:0 is {uuid_seen}, but nvidia-smi's GPU {gpu.index} is {gpu.uuid}")
    return ok(f"the job's cuda:0 is nvidia-smi's GPU {gpu.index} ({gpu.uuid})")


def mig(launcher: Launcher) -> Result:
    inventory, devices = usable()
    if not any(gpu.mig_enabled for gpu in inventory.gpus):
        return skip("no GPU in MIG mode here")
    if not any(device.mig for device in devices):
        return skip("the GPUs in MIG mode are outside this machine's CUDA_VISIBLE_DEVICES")
    position = next(i for i, device in enumerate(devices) if device.mig)
    refused = launcher("launch", "--name", launcher.name("gpu-mig"), "--include", f"localhost:{position}",
                       "examples/distributed_sum.py")  # fmt: skip
    if refused.returncode == 0 or "MIG devices cannot be picked by index" not in refused.stderr:
        return fail("--include by index on a MIG device was not refused")
    return ok("1 process by default; --include by index refused")


def busy_gpu(launcher: Launcher) -> Result:
    _, devices = usable()
    if not devices:
        return skip("no usable GPU")
    env = {**launcher.env, "CUDA_VISIBLE_DEVICES": devices[0].id, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    before = compute_pids()
    stray = subprocess.Popen([sys.executable, str(launcher.root / "hold_gpu.py"), "600"], env=env)
    try:
        listed = wait_until("the stray process to hold GPU memory", lambda: compute_pids() - before)
        contained = stray.pid not in listed  # the driver numbers it in the host's pid namespace
        job = launcher.name("gpu-busy")
        tried = launcher("launch", "--name", job, "--nproc-per-node", "1", "--wait", "examples/distributed_sum.py")
        if contained and (tried.returncode != 0 or "cannot tell whose" not in tried.stderr):
            return fail("in a container, a GPU held by a pid of another namespace did not give a note and a launch")
        if not contained and (tried.returncode == 0 or f"pid {stray.pid}" not in tried.stderr):
            return fail("a launch onto a GPU held by a process of no job was not refused naming its pid")
        allowed = launcher("launch", "--name", launcher.name("gpu-allowed"), "--nproc-per-node", "1",
                           "--allow-busy-gpus", "--wait", "examples/distributed_sum.py")  # fmt: skip
        if allowed.returncode != 0:
            return fail("--allow-busy-gpus did not let the job run")
        doctor = launcher("doctor", "--json")
        if not contained and f"pid {stray.pid}" not in doctor.stdout:
            return fail("doctor did not flag the GPU held by a process of no job")
        return ok("in a container: a note, not a refusal" if contained else "refused naming the pid; doctor flags it")
    except TimeoutError as exc:
        return fail(str(exc))
    finally:
        stray.kill()
        stray.wait()


def kill_frees_gpu(launcher: Launcher) -> Result:
    job = launcher.name("gpu-kill")
    before = compute_pids()
    started = launcher("launch", "--name", job, "--nproc-per-node", "1", "--runner", "python",
                       str(launcher.root / "hold_gpu.py"), "600")  # fmt: skip
    if started.returncode != 0:
        return fail("the GPU-holding job did not start")
    try:
        held = wait_until("the job to hold GPU memory", lambda: compute_pids() - before)
    except TimeoutError as exc:
        return fail(str(exc))
    contained = not job_gpu_pids(job, held)
    print(f"    GPU memory newly held by pid(s) {sorted(held)}{' (host pids: a container)' if contained else ''}")
    killed = launcher("kill", "--grace", "5", job)
    try:
        wait_until("the GPU memory to be freed", lambda: not (compute_pids() & held), timeout=30)
    except TimeoutError as exc:
        return fail(f"{exc}; nvidia-smi still lists {sorted(compute_pids() & held)}")
    if killed.returncode != 0:
        return fail(f"kill did not verify the job gone (exit {killed.returncode})")
    if contained and compute_pids() and "not verifiable in a container" not in killed.stdout:
        return fail("in a container, with other pids listed, kill did not say the GPU is not verifiable")
    return ok("in a container: freed; kill says what it cannot verify" if contained else "freed, verified by kill")


def job_gpu_pids(job: str, pids: set[int]) -> set[int]:
    """Of ``pids``, those whose environment here says they are of ``job``."""
    found = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LAUNCHER_JOB={job}".encode() in environ:
            found.add(pid)
    return found


def run_all(expected: int) -> list[tuple[str, Result]]:
    """Every check, each with its result; an exception in one is that check's FAIL."""
    launcher = Launcher()
    results: list[tuple[str, Result]] = []
    checks: list[tuple[str, Callable[[], Result]]] = [
        ("one process per usable GPU by default", lambda: default_nproc(launcher, expected)),
        ("a 1-GPU NCCL job on cuda:0", lambda: one_gpu_job(launcher)),
        ("--include picks nvidia-smi's GPU 1", lambda: include(launcher)),
        ("MIG", lambda: mig(launcher)),
        ("a busy GPU", lambda: busy_gpu(launcher)),
        ("kill frees the GPU", lambda: kill_frees_gpu(launcher)),
    ]
    try:
        for name, check in checks:
            print(f"\n== {name}")
            try:
                result = check()
            except Exception as exc:  # noqa: BLE001 (one line per check, no traceback; the others still run)
                result = fail(f"{type(exc).__name__}: {exc}")
            print(f"   {result.status} {result.detail}")
            results.append((name, result))
    finally:
        launcher.close()
    return results
