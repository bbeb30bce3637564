"""One record of what to launch, and the one function that builds it from a user's inputs.

The CLI and Python callers both go through ``make_spec``: the same inputs give the same
per-host plan either way (environment forwarding, env files, ``--include/--exclude``,
flag checks). Every check here runs before any host is contacted.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from launcher.errors import UsageError
from launcher.hosts.files import MAX_SLOTS, Host
from launcher.hosts.selection import check_nproc_for_gpus, select_hosts
from launcher.hosts.sources import HostsArg, resolve_hosts
from launcher.launching import commands, environment
from launcher.protocol.stack import HANG_TIMEOUT_VARIABLE, ON_HANG_VARIABLE
from launcher.sync.run import DEFAULT_SYNC_MAX, check_remote_dir, parse_size
from launcher.transport.agent import SshOptions

_NPROC_WORDS = ("gpu", "auto", "cpu")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything ``launch_job`` needs, resolved: hosts as records, the job's variables merged."""

    script: str
    """The training script, as the nodes will open it (relative to ``cwd``); a command for ``exec``."""
    script_args: tuple[str, ...] = ()
    hosts: tuple[Host, ...] = ()
    name: str | None = None
    """Job name; default ``<script stem>-<time>``."""
    nproc_per_node: str | None = None
    """Processes per node (a number, or torchrun's ``gpu``/``auto``/``cpu``); default: the host's slots, else 1."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The job's variables, on top of each node's login environment (forwarded ones included)."""
    python: str = sys.executable
    """The interpreter on the nodes (for the agent, torchrun and the script)."""
    cwd: str = field(default_factory=os.getcwd)
    """The working directory on the nodes."""
    rdzv_port: int | None = None
    """Port of the c10d store on the first host; default: one found free there."""
    runner: commands.Runner = "torchrun"
    """``torchrun``; ``python`` runs the script once per node with MASTER_ADDR/NODE_RANK/...;
    ``exec`` runs SCRIPT as a command."""
    nnodes: str | None = None
    """torchrun's ``--nnodes`` for elastic jobs (``MIN:MAX``); default: the number of hosts."""
    max_restarts: int = 0
    torchrun_args: tuple[str, ...] = ()
    """More torchrun options, placed before the script."""
    force: bool = False
    """Replace a job of the same name that is still running, instead of refusing."""
    teardown: bool = True
    """When the job fails on one node, stop it on all (else the others hang at a collective)."""
    allow_busy_gpus: bool = False
    """Launch even where another program, or another launcher job, holds a GPU the job would use."""
    heartbeat_timeout: float = 15.0
    """Seconds a node may be silent to the others before it counts as lost and the job stops."""
    ssh: SshOptions = field(default_factory=SshOptions)
    sync_dir: str | None = None
    """This machine's directory to copy to ``cwd`` on every host before the job starts
    (``--sync``); None: the code is there already (a shared disk)."""
    sync_max: int = DEFAULT_SYNC_MAX
    """Refuse to sync more bytes than this (``--sync-max``)."""
    allow_mismatch: bool = False
    """Launch even where a host's Python or torch version differs from this machine's."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Files for each node's run directory (``inputs/``), name -> content in base64: the
    pickled call of ``launcher.run``. ``make_spec`` sets none."""
    restarts: int = 0
    """How often the job may be launched again after it failed or lost a host (``--restarts``):
    a watcher on this machine blames a host, replaces it, and relaunches (``recovery.py``)."""
    spares: tuple[Host, ...] = ()
    """Hosts that may take the place of a host left out (``--spares``)."""
    attempt: int = 1
    """Which attempt this launch is: the job's processes get it as ``LAUNCHER_ATTEMPT``."""


def make_spec(
    script: str,
    script_args: Sequence[str] = (),
    *,
    hosts: HostsArg = None,
    include: str | None = None,
    exclude: str | None = None,
    name: str | None = None,
    nproc_per_node: int | str | None = None,
    env: Mapping[str, str] | None = None,
    assignments: Sequence[str] = (),
    env_files: Sequence[str] = (),
    forward_env: bool = True,
    python: str | None = None,
    cwd: str | None = None,
    runner: commands.Runner = "torchrun",
    rdzv_port: int | None = None,
    nnodes: str | int | None = None,
    max_restarts: int = 0,
    torchrun_args: str | Sequence[str] = (),
    force: bool = False,
    teardown: bool = True,
    allow_busy_gpus: bool = False,
    heartbeat_timeout: float = 15.0,
    connect_timeout: float = 10.0,
    max_parallel: int = 128,
    sync: bool = False,
    remote_dir: str | None = None,
    sync_max: int | str = DEFAULT_SYNC_MAX,
    allow_mismatch: bool = False,
    hang_timeout: float | str | None = None,
    on_hang: str = "stop",
    environ: Mapping[str, str] | None = None,
    restarts: int = 0,
    spares: HostsArg = None,
) -> LaunchSpec:
    """Check a launch's inputs and resolve them, as ``launcher launch`` does.

    ``hosts``: a hosts file, an inline list (``node1,node2:4``), ``localhost``, ``slurm``,
    or Host records. ``env``: variables for the job, applied last (after forwarded ones
    from ``environ``, ``.launcher_env``, ``env_files`` and ``assignments`` ``KEY=VALUE``).
    Raises UsageError or HostsFileError, one line each, before any host is contacted.
    """
    environ = os.environ if environ is None else environ
    sync_dir, cwd = _sync_dirs(sync, remote_dir, cwd)
    resolved = resolve_hosts(hosts, environ)
    if include is not None or exclude is not None:
        resolved = select_hosts(resolved, include, exclude)
    # With --sync, the project is the directory being copied: its .launcher_env is read
    # there, not in --remote-dir (a path on the hosts, which this machine may not have).
    job_env = environment.user_env(
        environ=environ, cwd=sync_dir or cwd, env_files=env_files, assignments=assignments, forward=forward_env
    )
    job_env.update(env or {})
    job_env.update(hang_env(hang_timeout, on_hang))
    if name is not None:
        commands.check_job_name(name)
    nproc = check_nproc(nproc_per_node)
    check_nproc_for_gpus(resolved, nproc)
    return LaunchSpec(
        script=_check_script(script),
        script_args=tuple(script_args),
        hosts=resolved,
        name=name,
        nproc_per_node=nproc,
        env=job_env,
        python=python or sys.executable,
        cwd=cwd,
        runner=runner,
        rdzv_port=_check_port(rdzv_port),
        nnodes=check_nnodes(nnodes, len(resolved)),
        max_restarts=_check_count(max_restarts, "--max-restarts"),
        torchrun_args=_torchrun_args(torchrun_args),
        force=force,
        teardown=teardown,
        allow_busy_gpus=allow_busy_gpus,
        heartbeat_timeout=_check_heartbeat(heartbeat_timeout),
        ssh=SshOptions(connect_timeout=connect_timeout, max_parallel=max_parallel),
        sync_dir=sync_dir,
        sync_max=parse_size(sync_max, "--sync-max"),
        allow_mismatch=allow_mismatch,
        restarts=_check_count(restarts, "--restarts"),
        spares=check_spares(spares, resolved, restarts, environ),
    )


def check_spares(
    spares: HostsArg, hosts: Sequence[Host], restarts: int, environ: Mapping[str, str]
) -> tuple[Host, ...]:
    """``--spares``: a hosts file or a list (one name is a list too), none of them a host of
    the job, and only with ``--restarts`` (nothing else takes a spare)."""
    if spares is None or spares == "" or spares == ():
        return ()
    if not restarts:
        raise UsageError("--spares needs --restarts N (a spare replaces a host only at a restart)")
    if isinstance(spares, str) and "," not in spares and not os.path.exists(spares) and spares != "slurm":
        spares = f"{spares},"  # one host named inline
    found = resolve_hosts(spares, environ)
    taken = {h.label for h in hosts} & {h.label for h in found}
    if taken:
        raise UsageError(f"--spares: {', '.join(sorted(taken))} is already a host of the job")
    return found


def hang_env(timeout: float | str | None, on_hang: str) -> dict[str, str]:
    """``--hang-timeout``/``--on-hang`` as the job's variables, read by its supervisors."""
    if on_hang not in ("stop", "keep"):
        raise UsageError(f"--on-hang must be stop or keep, got {on_hang!r}")
    if timeout is None:
        if on_hang == "keep":
            raise UsageError("--on-hang keep needs --hang-timeout")
        return {}
    return {HANG_TIMEOUT_VARIABLE: f"{parse_duration(timeout, '--hang-timeout'):g}", ON_HANG_VARIABLE: on_hang}


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def parse_duration(value: float | str, option: str) -> float:
    """``90s``, ``10m``, ``1h`` or seconds (``120``, ``2.5``) -> seconds, from 1 s to 30 days."""
    text = str(value).strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in ("s", "m", "h") else (text, "")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise UsageError(f"{option} must be a duration such as 90s, 10m, 1h or seconds, got {value!r}") from None
    if not 1 <= seconds <= 30 * 86400:
        raise UsageError(f"{option} must be from 1 s to 30 days, got {value!r}")
    return seconds


def _check_heartbeat(seconds: float) -> float:
    if not 0.5 <= seconds <= 86400:
        raise UsageError(f"--heartbeat-timeout must be from 0.5 to 86400 seconds, got {seconds:g}")
    return float(seconds)


def _sync_dirs(sync: bool, remote_dir: str | None, cwd: str | None) -> tuple[str | None, str]:
    """``--sync``: this directory, copied to ``--remote-dir`` (default: the same path), the job's cwd there."""
    if not sync:
        if remote_dir is not None:
            raise UsageError("--remote-dir needs --sync")
        return None, cwd or os.getcwd()
    if cwd is not None:
        raise UsageError("--sync copies this directory to the hosts: name where with --remote-dir, not --cwd")
    here = os.getcwd()
    return here, check_remote_dir(remote_dir) if remote_dir is not None else here


def check_nproc(value: int | str | None) -> str | None:
    """``--nproc-per-node``: a whole number from 1 to MAX_SLOTS, or gpu/auto/cpu."""
    if value is None:
        return None
    text = str(value).strip()
    if text in _NPROC_WORDS:
        return text
    if text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_SLOTS:
        return str(int(text))
    raise UsageError(
        f"--nproc-per-node must be a whole number from 1 to {MAX_SLOTS}, or gpu, auto or cpu; got {text!r}"
    )


def check_nnodes(value: str | int | None, hosts: int) -> str | None:
    """``--nnodes``: N or MIN:MAX, and the hosts given must fit in it (else torchrun waits forever)."""
    if value is None:
        return None
    text = str(value).strip()
    low, colon, high = text.partition(":")
    if not (low.isascii() and low.isdigit() and (not colon or (high.isascii() and high.isdigit()))):
        raise UsageError(f"--nnodes must be N or MIN:MAX (whole numbers), got {text!r}")
    minimum, maximum = int(low), int(high or low)
    if not 1 <= minimum <= maximum:
        raise UsageError(f"--nnodes {text}: need 1 <= MIN <= MAX")
    if not minimum <= hosts <= maximum:
        raise UsageError(f"--nnodes {text} does not fit the {hosts} host(s) given: torchrun would wait for more")
    return text


def _torchrun_args(value: str | Sequence[str]) -> tuple[str, ...]:
    if not isinstance(value, str):
        return tuple(value)
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise UsageError(f"--torchrun-args {value!r} does not parse: {exc}") from None


def _check_port(port: int | None) -> int | None:
    if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
        raise UsageError(f"--rdzv-port must be a port from 1 to 65535, got {port!r}")
    return port


def _check_count(value: int, option: str) -> int:
    if not isinstance(value, int) or value < 0:
        raise UsageError(f"{option} must be a whole number >= 0, got {value!r}")
    return value


def _check_script(script: str) -> str:
    if not script or not script.strip():
        raise UsageError("no script given: launcher launch [OPTIONS] SCRIPT [ARGS]...")
    return script
