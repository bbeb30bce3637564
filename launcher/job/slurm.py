"""Talking to SLURM for ``launcher sbatch --submit`` and ``kill``: sbatch, scontrol, scancel.

Every command is an argument list with a timeout; each failure is a ``SlurmError`` of
one line that names the SLURM job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass

from launcher.errors import SlurmError
from launcher.hosts.slurm import expand_slurm_nodelist

COMMAND_TIMEOUT_S = 30.0
POLL_S = 0.2
ACTIVE = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}
)
STARTED = frozenset({"RUNNING", "COMPLETING", "COMPLETED", "SUSPENDED"})
"""States of a job that got its nodes and ran (or runs) there."""
_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass(frozen=True)
class SlurmJob:
    """A SLURM job as ``scontrol show job`` tells it."""

    job_id: str
    state: str
    """``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``..."""
    reason: str
    nodes: tuple[str, ...]
    """The allocation's nodes, in order (empty while pending)."""


def command(name: str) -> str:
    """The path of SLURM's ``name``; SlurmError when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"{name} not found on PATH (SLURM's client commands are needed here)")
    return path


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [command(argv[0]), *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise SlurmError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _said(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1].strip() if lines else f"exit status {result.returncode}"


def submit(script: str, path: str | None = None) -> str:
    """Submit a batch script (the file at ``path``, else ``script`` on stdin); its job id."""
    result = _run(["sbatch", "--parsable", *([path] if path else [])], stdin=None if path else script)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode != 0 or not job_id.isdigit():
        raise SlurmError(f"sbatch refused the job: {_said(result)}")
    return job_id


def job(job_id: str) -> SlurmJob | None:
    """How SLURM sees the job; None when it no longer knows it (ended over MinJobAge ago)."""
    result = _run(["scontrol", "show", "job", "--oneliner", job_id])
    if result.returncode != 0:
        if "invalid job id" in result.stderr.lower():
            return None
        raise SlurmError(f"scontrol show job {job_id}: {_said(result)}", job_id)
    fields = dict(_FIELD.findall(result.stdout))
    nodelist = fields.get("NodeList", "")
    nodes = expand_slurm_nodelist(nodelist) if nodelist and nodelist != "(null)" else ()
    return SlurmJob(job_id, fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None"), nodes)


def wait_until_started(job_id: str, timeout: float) -> SlurmJob:
    """Wait until the job has its nodes and runs; else cancel it and raise SlurmError."""
    deadline = time.monotonic() + timeout
    while True:
        seen = job(job_id)
        if seen is None:
            raise SlurmError(f"SLURM job {job_id} vanished before it started", job_id)
        if seen.state in STARTED and seen.nodes:
            return seen
        if seen.state not in ACTIVE:
            raise SlurmError(f"SLURM job {job_id} failed to start: {seen.state} (reason: {seen.reason})", job_id)
        if time.monotonic() > deadline:
            cancel(job_id)
            raise SlurmError(
                f"SLURM job {job_id} still {seen.state} after {timeout:g} s (reason: {seen.reason}); cancelled it",
                job_id,
            )
        time.sleep(POLL_S)


def cancel(job_id: str, wait: float = 0.0) -> SlurmJob | None:
    """``scancel`` the job (unless SLURM says it has ended) and wait up to ``wait`` seconds
    for it to end; how SLURM sees it then."""
    seen = job(job_id)
    if seen is None or seen.state not in ACTIVE:
        return seen
    result = _run(["scancel", job_id])
    if result.returncode != 0:
        raise SlurmError(f"scancel refused SLURM job {job_id}: {_said(result)}", job_id)
    deadline = time.monotonic() + wait
    while seen is not None and seen.state in ACTIVE and time.monotonic() < deadline:
        time.sleep(POLL_S)
        seen = job(job_id)
    return seen
