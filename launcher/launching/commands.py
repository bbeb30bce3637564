"""What runs on each node: the torchrun command line and the job's environment (pure)."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Literal

from launcher.errors import UsageError
from launcher.protocol.base import RANK_PREFIX_TEMPLATE, session_name
from launcher.protocol.stack import NCCL_PIPE_PREFIX, NCCL_TRACE_PREFIX

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}")


def check_job_name(name: str) -> str:
    """Job names become tmux session names and directory names: keep them plain."""
    if not _JOB_NAME.fullmatch(name):
        raise UsageError(
            f"bad job name {name!r}: use letters, digits, '-' and '_' (up to 80, starting with a letter or digit)"
        )
    return name


def default_job_name(script: str, now: float | None = None) -> str:
    """``<script stem>-<yymmdd-hhmmss>``: readable, sortable, unique enough per launcher."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", PurePath(script).stem).strip("-_") or "job"
    return f"{stem[:48]}-{time.strftime('%y%m%d-%H%M%S', time.localtime(now))}"


def rdzv_endpoint(address: str, port: int | str) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


Runner = Literal["torchrun", "python", "exec"]


@dataclass(frozen=True)
class NodeCommand:
    """What one node runs: an argument list (never a shell string) and extra variables."""

    argv: list[str]
    env: dict[str, str]


def node_command(
    *,
    runner: Runner,
    python: str,
    nnodes: int,
    nnodes_spec: str | None,
    node_rank: int,
    nproc_per_node: str,
    endpoint: tuple[str, int | str],
    job: str,
    log_dir: str,
    script: str,
    script_args: Sequence[str],
    max_restarts: int,
    torchrun_args: Sequence[str],
) -> NodeCommand:
    """The command for node ``node_rank`` of a job, for any runner.

    torchrun gets the c10d rendezvous at ``endpoint`` (the first host), and the first node
    is told it serves the store (``is_host=1``) instead of letting torch guess it from host
    names, which fails behind ssh-config aliases and NAT. The other runners get the
    variables scripts that start their own workers expect.
    """
    address, port = endpoint
    if runner == "torchrun":
        argv = [
            python,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            nnodes_spec or str(nnodes),
            "--nproc-per-node",
            nproc_per_node,
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            rdzv_endpoint(address, port),
            "--rdzv-id",
            job,
            "--rdzv-conf",
            f"is_host={int(node_rank == 0)}",
            "--max-restarts",
            str(max_restarts),
            "--log-dir",
            log_dir,
            "--tee",
            "3",
            *torchrun_args,
            script,
            *script_args,
        ]
        return NodeCommand(argv, {})
    env = {
        "MASTER_ADDR": address,
        "MASTER_PORT": str(port),
        "NODE_RANK": str(node_rank),
        "NNODES": str(nnodes),
        "NPROC_PER_NODE": nproc_per_node,
    }
    if nproc_per_node.isdigit():
        env["WORLD_SIZE"] = str(nnodes * int(nproc_per_node))
    argv = [python, "-u", script, *script_args] if runner == "python" else [script, *script_args]
    return NodeCommand(argv, env)


_NOT_A_FILE_FLAGS = {"-m", "--module", "--no-python", "--no_python"}


def script_file(runner: Runner, script: str, torchrun_args: Sequence[str]) -> str | None:
    """The file the job's script must be on every node, or None where SCRIPT is not a file
    (``--runner exec`` runs a command; torchrun's ``--module``/``--no-python`` take a name)."""
    if runner == "exec" or _NOT_A_FILE_FLAGS & set(torchrun_args):
        return None
    return script


def job_env(user_env: Mapping[str, str], log_dir: str) -> dict[str, str]:
    """The variables the job gets on top of the node's login environment."""
    env = {
        "OMP_NUM_THREADS": "1",
        "TORCHELASTIC_ERROR_FILE": f"{log_dir}/error.json",
    }
    env.update(flight_recorder_env(log_dir.rsplit("/", 1)[0], user_env))
    env.update(user_env)
    # PYTHONPATH: the node puts its own startup hook first (node/start.py, ranks_pythonpath).
    # Not overridable: the launcher reads ranks from this prefix and the output unbuffered.
    env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] = RANK_PREFIX_TEMPLATE
    env["PYTHONUNBUFFERED"] = "1"
    return env


def flight_recorder_env(run_dir: str, user_env: Mapping[str, str]) -> dict[str, str]:
    """NCCL's flight recorder on (torch's default buffer), a dump into the run directory on a
    collective's timeout, and a pipe that dumps on demand (``launcher stack --nccl``). Only
    NCCL reads them: harmless on CPU. A variable the user set (under any of torch's names
    for it) is left as the user set it. Set under torch's current names (``TORCH_FR_*``):
    2.13 warns on every rank about the older ones; a torch before the flight recorder's
    ``TORCH_FR_*`` names ignores them."""
    wanted = {
        ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE"): "2000",
        ("TORCH_NCCL_DUMP_ON_TIMEOUT",): "1",
        ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE"): f"{run_dir}/{NCCL_TRACE_PREFIX}",
        ("TORCH_NCCL_DEBUG_INFO_PIPE_FILE",): f"{run_dir}/{NCCL_PIPE_PREFIX}",
    }
    return {names[0]: value for names, value in wanted.items() if not any(n in user_env for n in names)}


def attach_argv(
    host_name: str, user: str | None, port: int | None, local: bool, job: str, read_only: bool
) -> list[str]:
    """The command that opens a job's tmux session on a host, interactively."""
    # ``=``: that exact session; a bare name also matches by prefix, so ``launcher-train``
    # would open ``launcher-train-2`` once it has ended (and ``--rw`` type into that job).
    tmux = ["tmux", "attach-session", *(["-r"] if read_only else []), "-t", f"={session_name(job)}"]
    if local:
        return tmux
    options = [*(["-p", str(port)] if port else []), *(["-l", user] if user else [])]
    # Quoting point: ssh hands the remote command to the login shell as one string.
    return ["ssh", "-t", *options, host_name, shlex.join(tmux)]
