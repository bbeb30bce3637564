"""``launcher stack --nccl``: the ranks' NCCL flight-recorder dumps, read by torch's analyzer
(``python -m torch.distributed.flight_recorder.fr_trace``), which names the collectives
that some ranks never joined."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from launcher.protocol.stack import NCCL_TRACE_PREFIX

ANALYZER = "torch.distributed.flight_recorder.fr_trace"


def analyze(dumps: Mapping[int, bytes], timeout: float = 300.0) -> str:
    """What torch's analyzer says of the dumps (one per rank), or why it could not say."""
    if not dumps:
        return "no flight-recorder dump (no rank of the job uses NCCL?)"
    with tempfile.TemporaryDirectory(prefix="launcher-fr-") as directory:
        for rank, data in dumps.items():
            (Path(directory) / f"{NCCL_TRACE_PREFIX}{rank}").write_bytes(data)
        argv = [sys.executable, "-m", ANALYZER, directory, "--prefix", NCCL_TRACE_PREFIX]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"torch's flight-recorder analyzer took over {timeout:g} s"
        except OSError as exc:
            return f"cannot run torch's flight-recorder analyzer: {exc.strerror or exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"torch's flight-recorder analyzer failed: {last}"
    # It reports through logging, on stderr; "tabulate is not installed" is no finding.
    said = (done.stdout + done.stderr).splitlines()
    output = "\n".join(line for line in said if line.strip() and "tabulate is not installed" not in line)
    return output or "torch's flight-recorder analyzer found nothing to report"
