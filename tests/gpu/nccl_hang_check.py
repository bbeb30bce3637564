"""A real NCCL hang on 2 GPUs (issue 20), for ``check_gpus.py``: ``launcher stack`` names the
stuck rank, ``--nccl`` has torch's analyzer name the rank missing from the collective, and
NCCL's own timeout leaves its flight-recorder dump in the run directory
(``TORCH_NCCL_DUMP_ON_TIMEOUT``, ``TORCH_FR_DUMP_TEMP_FILE``, set by every launch)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from launch_checks import Launcher, Result, fail, ok, skip, wait_until

NAME = "a real NCCL hang: launcher stack --nccl and the timeout's dump"
TIMEOUT_S = 60


def run_all(gpu_count: int) -> list[tuple[str, Result]]:
    if gpu_count < 2:
        return [(NAME, skip(f"needs 2 GPUs, {gpu_count} here"))]
    launcher = Launcher()
    try:
        return [(NAME, nccl_hang(launcher))]
    except Exception as exc:  # noqa: BLE001 (one line per check, no traceback)
        return [(NAME, fail(f"{type(exc).__name__}: {exc}"))]
    finally:
        launcher.close()


def nccl_hang(launcher: Launcher) -> Result:
    job = launcher.name("nccl-hang")
    started = launcher(
        "launch", "--hosts", "localhost", "--name", job, "--nproc-per-node", "2",
        "-e", f"NCCL_HANG_TIMEOUT={TIMEOUT_S}", "tests/scripts/nccl_stuck.py",
    )  # fmt: skip
    if started.returncode != 0:
        return fail(f"the launch failed: {started.stderr.strip()[-300:]}")
    wait_until("both ranks joined", lambda: launcher.logs(job).count("nccl_stuck: rank ") == 2, timeout=180)
    began = time.monotonic()
    taken = launcher("stack", job, "--nccl")
    took = time.monotonic() - began
    if taken.returncode != 0 or "rank 1 on localhost elsewhere: load_batch_forever" not in taken.stdout:
        return fail(f"launcher stack did not name rank 1 in load_batch_forever: {taken.stdout.strip()[-400:]}")
    if "missing ranks: {1}" not in taken.stdout:
        return fail(f"torch's analyzer did not name rank 1 missing: {taken.stdout.strip()[-600:]}")
    run_dir = Path(launcher.env["XDG_STATE_HOME"]) / "launcher" / "runs" / job / socket.gethostname()
    dump = run_dir / "nccl_trace_rank_0"
    on_timeout = dump.stat().st_mtime if dump.exists() else 0.0
    wait_until(
        "NCCL's timeout to dump rank 0's flight recorder again",
        lambda: dump.exists() and dump.stat().st_mtime > on_timeout + 1,
        timeout=TIMEOUT_S + 120,
    )
    return ok(f"stack --nccl in {took:.1f} s named rank 1 (py-spy and fr_trace); the timeout's dump in {run_dir}")
