"""The contenders that stay in the foreground while the job runs: torchrunx and the
DeepSpeed launcher (``deepspeed --launcher pdsh``). Neither returns once the job has
started: their launch is timed until the job's own process runs on every host, and their
kill is what a user has, Ctrl-C (SIGINT to the command's process group).

* **torchrunx**: ``python -m bench.jobs.torchrunx_job`` (see there): ``torchrunx.Launcher``
  with one worker per host, the job written as a function.
* **deepspeed**: ``python -m deepspeed.launcher.runner --hostfile FILE --launcher pdsh
  --no_ssh_check --force_multi --no_local_rank --master_addr <h0> --master_port P SCRIPT
  ARGS``, FILE holding ``hN slots=1`` lines. ``--no_ssh_check``: its check runs a plain
  ``ssh HOST``, which reads root's own ``~/.ssh/config``, not the cluster's (pdsh gets it
  from ``PDSH_SSH_ARGS_APPEND``, as for the pdsh contender); ``--force_multi``: with one
  host it would run the job on this machine instead; ``--no_local_rank``: the scripts take
  no ``--local_rank``. Its output (every host's, prefixed ``hN:`` by pdsh) goes to a file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import psutil

from bench.procs import REPO
from bench.site import Site

FOREGROUND = ("torchrunx", "deepspeed")
INSTALL = {
    "torchrunx": "pip install torchrunx",
    "deepspeed": "DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed",
}
STOP_TIMEOUT_S = 30.0
_KINDS = {
    "bench/jobs/sleeper.py": "light",
    "examples/distributed_sum.py": "sum",
    "bench/jobs/dist_sleep.py": "dist-sleep",
}


def missing(contender: str) -> str | None:
    """Why ``contender`` cannot run here (not installed), or None."""
    module = {"torchrunx": "torchrunx", "deepspeed": "deepspeed"}.get(contender)
    if module is None:
        return None
    if importlib.util.find_spec(module) is None:
        return f"{contender} is not installed ({INSTALL[contender]})"
    if contender == "deepspeed" and shutil.which("pdsh") is None:
        return "deepspeed's pdsh launcher needs pdsh"
    return None


def argv(site: Site, job_name: str, script: str, args: tuple[str, ...], port: int, contender: str) -> list[str]:
    if contender == "torchrunx":
        out = output_dir(site, job_name)
        addresses = ",".join(h.address for h in site.cluster.hosts)
        command = [sys.executable, "-m", "bench.jobs.torchrunx_job", "--hosts", addresses]
        command += ["--ssh-config", str(site.cluster.ssh_config), "--callback", site.cluster.gateway]
        command += ["--out", str(out), _KINDS[script], job_name]
        return command + (["--helper"] if "--helper" in args else [])
    hostfile = site.cluster.workdir / "bench-deepspeed-hosts"
    if not hostfile.exists():
        hostfile.write_text("".join(f"{host} slots=1\n" for host in site.hosts))
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--launcher", "pdsh"]
    command += ["--no_ssh_check", "--force_multi", "--no_local_rank", "--master_addr", site.first_address]
    return [*command, "--master_port", str(port), script, *args]


def env(site: Site) -> dict[str, str]:
    # torchrunx's launching side joins a gloo group with its agents: on the cluster's
    # network, where the hosts can reach it (they have no route to anything else).
    return {**site.env(), "GLOO_SOCKET_IFNAME": site.cluster.bridge}


def output_dir(site: Site, job_name: str) -> Path:
    """Where the job's output lands: torchrunx's jobs write ``<host>.log`` here, deepspeed's
    whole output goes to ``deepspeed.out`` (the recipes' directory, ``recipe_output``)."""
    path = site.output_dir / job_name
    path.mkdir(exist_ok=True)
    return path


def start(
    site: Site, job_name: str, script: str, args: tuple[str, ...], port: int, contender: str
) -> subprocess.Popen[bytes]:
    out = output_dir(site, job_name)
    stdout: IO[bytes] | int
    stdout = open(out / "deepspeed.out", "ab") if contender == "deepspeed" else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            argv(site, job_name, script, args, port, contender),
            cwd=REPO,
            env=env(site),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if contender == "deepspeed" else subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if not isinstance(stdout, int):
            stdout.close()


def hosts_with_line(site: Site, job_name: str, contender: str, needle: str) -> int:
    """How many hosts' output holds a line with ``needle``."""
    out = site.output_dir / job_name
    if contender == "torchrunx":
        count = 0
        for path in out.glob("*.log"):
            with contextlib.suppress(FileNotFoundError):
                count += needle in path.read_text(errors="replace")
        return count
    try:
        text = (out / "deepspeed.out").read_text(errors="replace")
    except FileNotFoundError:
        return 0
    # pdsh prefixes each line with "hN: "; a needle ending in a newline must end the line.
    matches = (lambda line: line.endswith(needle[:-1])) if needle.endswith("\n") else (lambda line: needle in line)
    hosts = {line.split(":", 1)[0] for line in text.splitlines() if ":" in line and matches(line)}
    return len(hosts & set(site.hosts))


def hosts_running(site: Site, job_name: str, contender: str) -> int:
    """How many hosts run the job's own code: the function (torchrunx), the script (deepspeed)."""
    if contender == "torchrunx":
        return hosts_with_line(site, job_name, contender, f"running {job_name}")
    return sum(
        any(job_name in p.command and "deepspeed.launcher" not in p.command and not _shell(p.command) for p in procs)
        for procs in site.job_processes().values()
    )


def _shell(command: str) -> bool:
    return os.path.basename(command.split(" ", 1)[0]).lstrip("-") in ("bash", "sh", "dash")


def cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds of the command so far: its own, its live descendants', and those it reaped."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(proc.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def interrupt(proc: subprocess.Popen[bytes]) -> float | None:
    """Ctrl-C: SIGINT to the command's process group; seconds until it exited (None: killed)."""
    begin = time.perf_counter()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        end(proc)
        return None
    return time.perf_counter() - begin


def end(proc: subprocess.Popen[bytes]) -> None:
    """What this command started on this machine goes (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
