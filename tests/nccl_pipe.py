"""A stand-in for torch's NCCL watchdog on a rank's debug pipe (``TORCH_NCCL_DEBUG_INFO_PIPE_FILE``):
it holds the pipe open, and once something is written to it, writes the rank's flight-recorder
dump where ``TORCH_FR_DUMP_TEMP_FILE`` points (here ``<run dir>/nccl_trace_rank_<r>``)."""

from __future__ import annotations

import os
import select
import threading
from pathlib import Path


def answer_dump_requests(run_dir: Path, rank: int, dump: bytes) -> threading.Thread:
    """Make ``<run_dir>/nccl_pipe_<rank>.pipe`` and answer its first request with ``dump``."""
    pipe = run_dir / f"nccl_pipe_{rank}.pipe"
    os.mkfifo(pipe, 0o600)
    held = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # held open, as torch's watchdog holds it

    def watchdog() -> None:  # as torch's: read the pipe, then write the dump
        while True:
            select.select([held], [], [], 5)
            try:
                if os.read(held, 16):
                    break
            except BlockingIOError:
                continue
        os.close(held)
        (run_dir / f"nccl_trace_rank_{rank}").write_bytes(dump)

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    return thread
