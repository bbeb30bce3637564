"""The command lines of every contender, for the same hosts and the same job.

The recipes are what a user types: ``xargs`` over the hosts file running ``ssh HOST tmux
new-session -d -s JOB '...'`` (one host after another, or ``-P 32`` at once), and pdsh.
Their node command is the same one the launcher runs: ``python -u SCRIPT`` for the light
job; for torchrun, the c10d rendezvous on the first host's address with a fixed port and
``--rdzv-id JOB``, as the launcher builds it. Every recipe also sets ``OMP_NUM_THREADS=1``
(so does the launcher) and sends the job's output to a file in the shared workdir.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.procs import REPO, Run, is_shell, run_timed
from bench.site import Site

Contender = Literal["launcher", "xargs", "xargs -P 32", "pdsh", "floor", "torchrunx", "deepspeed"]
PARALLEL = 32
"""Fan-out of ``xargs -P`` and of pdsh (pdsh's default ``-f``)."""


@dataclass(frozen=True)
class Job:
    """What runs on every host: a script of the repository, with torchrun or without."""

    name: str
    script: str
    """Relative to the repository root, which is also the job's working directory."""
    args: tuple[str, ...] = ()
    torchrun: bool = False
    port: int = 29500
    """Rendezvous port on the first host (the recipes' fixed one; the launcher picks its own)."""


def installed(contenders: tuple[Contender, ...]) -> tuple[Contender, ...]:
    """Those of ``contenders`` that can run here (torchrunx and deepspeed are optional)."""
    from bench.foreground import missing

    return tuple(c for c in contenders if missing(c) is None)


def launcher_launch(site: Site, job: Job) -> list[str]:
    runner = ["--nproc-per-node", "1"] if job.torchrun else ["--runner", "python"]
    options = ["--hosts", str(site.hosts_file), "--name", job.name, *runner]
    return [sys.executable, "-m", "launcher", "launch", *options, job.script, *job.args]


def launcher_status(job: Job) -> list[str]:
    return [sys.executable, "-m", "launcher", "status", job.name]


def launcher_kill(job: Job, grace: float) -> list[str]:
    return [sys.executable, "-m", "launcher", "kill", "--grace", f"{grace:g}", job.name]


def recipe_launch(site: Site, job: Job, contender: Contender) -> list[str]:
    remote = shlex.join(["tmux", "new-session", "-d", "-s", job.name, "-c", str(REPO), _pane_command(site, job)])
    return on_every_host(site, remote, contender)


def recipe_kill(site: Site, job: Job, contender: Contender) -> list[str]:
    return on_every_host(site, shlex.join(["tmux", "kill-session", "-t", job.name]), contender)


def on_every_host(site: Site, remote: str, contender: Contender) -> list[str]:
    """``remote`` (one line for the remote shell) on every host, the way ``contender`` does it."""
    ssh = ["ssh", "-F", str(site.cluster.ssh_config)]
    if contender == "xargs":
        return ["xargs", "-a", str(site.hosts_file), "-I{}", *ssh, "{}", remote]
    if contender == "xargs -P 32":
        return ["xargs", "-a", str(site.hosts_file), "-P", str(PARALLEL), "-I{}", *ssh, "{}", remote]
    if contender == "pdsh":
        # -S: exit with the largest remote status, so that a failed host is noticed.
        return ["pdsh", "-S", "-R", "ssh", "-f", str(PARALLEL), "-w", ",".join(site.hosts), remote]
    raise ValueError(f"{contender} is not a recipe")


def floor(site: Site) -> list[str]:
    return [sys.executable, "-m", "bench.floor", *site.hosts]


def recipe_output(site: Site, job: Job) -> Path:
    """Where the recipes' job writes its output: one file per host, in this directory."""
    return site.output_dir / job.name


def _pane_command(site: Site, job: Job) -> str:
    """The line tmux hands to the shell on the node (the recipe's one quoting point)."""
    python = sys.executable
    if job.torchrun:
        argv = [python, "-m", "torch.distributed.run", "--nnodes", str(site.n), "--nproc-per-node", "1"]
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"{site.first_address}:{job.port}"]
        argv += ["--rdzv-id", job.name, job.script, *job.args]
    else:
        argv = [python, "-u", job.script, *job.args]
    log = shlex.quote(str(recipe_output(site, job))) + '/"$(hostname)".log'
    return f"OMP_NUM_THREADS=1 exec {shlex.join(argv)} > {log} 2>&1"


# ---------------------------------------------------------------------------- actions


def start(site: Site, job: Job, contender: Contender) -> Run:
    """Launch ``job`` on every host the way ``contender`` does; the floor only runs ``true``."""
    if contender == "launcher":
        return run_timed(launcher_launch(site, job), site.env())
    if contender == "floor":
        return run_timed(floor(site), site.env())
    recipe_output(site, job).mkdir(exist_ok=True)
    return run_timed(recipe_launch(site, job, contender), site.env())


def output_files(site: Site, job: Job, contender: Contender) -> list[Path]:
    """The files holding the job's output, one per host that has written any."""
    if contender in ("torchrunx", "deepspeed"):
        return sorted((site.output_dir / job.name).glob("*.log" if contender == "torchrunx" else "deepspeed.out"))
    if contender == "launcher":
        # The node agents' run directories (launcher/paths.py): <state>/launcher/runs/JOB/HOST/.
        return sorted(site.cluster.node_state_dir.glob(f"*/runs/{job.name}/*/output.log"))
    return sorted(recipe_output(site, job).glob("*.log"))


def hosts_with_line(site: Site, job: Job, contender: Contender, needle: str) -> int:
    """How many hosts' output holds a line containing ``needle``."""
    if contender in ("torchrunx", "deepspeed"):
        from bench.foreground import hosts_with_line as foreground_hosts_with_line

        return foreground_hosts_with_line(site, job.name, contender, needle)
    count = 0
    for path in output_files(site, job, contender):
        try:
            count += needle in path.read_text(errors="replace")
        except FileNotFoundError:
            continue
    return count


def hosts_running(site: Site, job: Job) -> int:
    """How many hosts run a process of ``job`` (its name is on every job's command line).

    Not counting the shell a tmux pane starts the job with: it may still be reading
    ~/.bashrc, and the job is not running until it has exec'd.
    """
    return sum(any(job.name in p.command and not is_shell(p) for p in procs) for procs in site.job_processes().values())
