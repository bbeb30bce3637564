"""A real SLURM on the test cluster: munged and slurmctld on the launching side, slurmd in each host.

Given a running ``Cluster`` (see ``cluster.py``), this starts, all under ``<workdir>/slurm``:

- one ``munged`` with its own key, socket, pid and seed files (not ``/run/munge``: the machine's
  own munge, if any, must not matter; not ``/tmp``: each host has a private one);
- one ``slurmctld`` in the root namespace, listening on the cluster's bridge address only;
- one ``slurmd -N <host>`` per host, *inside* that host's namespaces (network, hostname,
  processes, mount), so jobs run on the host, and ``TestHost.processes()`` sees them.

Every daemon uses the one generated ``slurm.conf`` (``SLURM_CONF``), and the one munged socket:
a Unix socket path reaches across network namespaces, and the workdir is shared by all hosts.

    with start_slurm(cluster) as slurm:
        subprocess.run(["srun", "-N", "3", "hostname"], env=slurm.env())

Needs root and Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge``. What a SLURM
starts is recorded in ``/run/lnch-slurm/<cluster token>.json`` with the creating process, so
that the next start kills the daemons of a crashed run (by pid, checked against their start
time) and removes its directory. The slurmd processes live in the hosts, so the cluster's own
stale cleanup takes them too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil
from cluster import Cluster, TestHost
from registry import Registry

__all__ = [
    "SLURM_PROGRAMS",
    "SlurmCluster",
    "SlurmError",
    "missing_slurm_programs",
    "remove_stale_slurms",
    "start_slurm",
]

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "salloc", "squeue", "scancel", "scontrol", "sinfo")
"""What the Debian packages ``munge``, ``slurmctld``, ``slurmd`` and ``slurm-client`` install."""
REGISTRY_DIR = Path("/run/lnch-slurm")
_REGISTRY = Registry(REGISTRY_DIR)
SLURM_DIR_NAME = "slurm"
"""The directory in the cluster's workdir that holds all a SLURM makes."""
PARTITION = "debug"
CONTROLLER_NAME = "slurmctld"
"""Hostname of slurmctld, in a UTS namespace of its own (see ``_start_slurmctld``)."""
SLURMD_PORT = 6818
"""Each slurmd has a network namespace of its own, so the default port is always free there."""
START_DEADLINE_S = 60.0
STOP_DEADLINE_S = 10.0
COMMAND_TIMEOUT_S = 30.0
KILL_WAIT_S = 2
ACTIVE_JOB_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT", "SIGNALING"}
)
"""Seconds between a cancelled job's SIGTERM and its SIGKILL (SLURM's default is 30)."""


class SlurmError(RuntimeError):
    """The test SLURM could not be started or stopped."""


@dataclass(frozen=True)
class _Daemon:
    """A daemon we started: its pid in the root namespace and its start time (tells pid reuse)."""

    name: str
    pid: int
    create_time: float


def missing_slurm_programs() -> list[str]:
    """Which of ``SLURM_PROGRAMS`` are not installed (``/usr/sbin`` counted: root's PATH may lack it)."""
    return [
        program
        for program in SLURM_PROGRAMS
        if shutil.which(program) is None and not os.access(f"/usr/sbin/{program}", os.X_OK)
    ]


class SlurmCluster:
    """A running SLURM on a ``Cluster``. Use as a context manager, or call ``close()``."""

    def __init__(self, cluster: Cluster, cpus_per_node: int) -> None:
        self.cluster = cluster
        self.dir = cluster.workdir / SLURM_DIR_NAME
        """Everything this SLURM makes: config, munge key and socket, state, spools, logs."""
        self.conf = self.dir / "slurm.conf"
        """The ``slurm.conf`` of every daemon and command (``SLURM_CONF`` in ``env()``)."""
        self.jobs_dir = self.dir / "jobs"
        """For tests' job scripts and output files: seen by every host, and the cwd of ``run()``."""
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.cluster_name = f"lnch{cluster.token}"
        self.cpus_per_node = cpus_per_node
        self.partition = PARTITION
        self.nodes = [host.name for host in cluster.hosts]
        """Node names, the same as the hosts' names: ``h0``, ``h1``..."""
        self.controller_port = 0
        """Port of slurmctld on ``cluster.gateway``; chosen free at start."""
        self._daemons: list[_Daemon] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._closed = False

    @property
    def daemon_pids(self) -> dict[str, int]:
        """Root-namespace pid of each daemon started: ``munged``, ``slurmctld``, ``slurmd-h0``..."""
        return {daemon.name: daemon.pid for daemon in self._daemons}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for ``sbatch``, ``srun``, ``salloc``, ``squeue``, ``scancel``, ``scontrol``.

        The cluster's environment with ``SLURM_CONF`` set, and without any ``SLURM_*`` of an
        allocation the test suite itself may run in (it would point the commands at that job).
        """
        env = {key: value for key, value in self.cluster.env().items() if not key.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = _with_sbin(env.get("PATH", ""))
        env.update(extra)
        return env

    def run(self, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """Run a command on the launching side, in ``jobs_dir`` (so in jobs too), with ``env()``."""
        return subprocess.run(
            list(argv),
            env=self.env(),
            cwd=self.jobs_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def node_states(self) -> dict[str, str]:
        """``sinfo``'s state of each node (``idle``, ``alloc``, ``down*``...); empty if slurmctld is not answering."""
        result = self.run(["sinfo", "--noheader", "--Node", "--format=%N %t"], timeout=10)
        if result.returncode != 0:
            return {}
        return dict(line.split(maxsplit=1) for line in result.stdout.splitlines() if line.strip())

    def job_ids(self) -> list[str]:
        """Ids of the jobs slurmctld still lists as pending, running or completing."""
        result = self.run(["squeue", "--noheader", "--format=%A"], timeout=10)
        if result.returncode != 0:
            raise SlurmError(f"squeue failed: {result.stderr.strip()}")
        return result.stdout.split()

    def job_info(self, job_id: str) -> dict[str, str]:
        """``scontrol show job``'s fields (``JobState``, ``ExitCode``, ``NodeList``...); slurmctld
        keeps an ended job for ``MinJobAge`` (300 s)."""
        result = self.run(["scontrol", "show", "job", "--oneliner", job_id], timeout=10)
        if result.returncode != 0:
            raise SlurmError(f"scontrol show job {job_id}: {result.stderr.strip()}")
        # Values with spaces (a Command= path) come out cut short; the fields tests need have none.
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def wait_for_job_end(self, job_id: str, timeout: float = COMMAND_TIMEOUT_S) -> dict[str, str]:
        """Wait until the job has ended (``sbatch --wait`` polls only every few seconds); its ``job_info``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(job_id)
            if info.get("JobState") not in ACTIVE_JOB_STATES:
                return info
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job_id} still {info.get('JobState')} after {timeout}s")
            time.sleep(0.1)

    def cancel_all_jobs(self) -> list[str]:
        """Cancel every job and wait until slurmctld lists none; the ids it cancelled."""
        ids = self.job_ids()
        if ids:
            self.run(["scancel", *ids], timeout=10)
        deadline = time.monotonic() + KILL_WAIT_S + STOP_DEADLINE_S
        while self.job_ids():
            if time.monotonic() > deadline:
                raise SlurmError(f"jobs {self.job_ids()} still listed {KILL_WAIT_S + STOP_DEADLINE_S}s after scancel")
            time.sleep(0.1)
        return ids

    def logs(self) -> str:
        """The tail of every daemon's log, for a failure message."""
        parts = []
        for path in sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.out")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").strip()
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text.splitlines()[-20:]))
        return "\n".join(parts)

    def close(self) -> None:
        """Cancel every job, stop every daemon this started, delete its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            # Without a slurmctld (a failed start), squeue would retry for MessageTimeout.
            if self._controller_running():
                with contextlib.suppress(SlurmError, subprocess.TimeoutExpired, OSError):
                    self.cancel_all_jobs()
            self._kill_job_steps()
        finally:
            try:
                # slurmd first: stopped after slurmctld, it would spend its time retrying it.
                _stop_daemons([d for d in self._daemons if d.name.startswith("slurmd")])
                _stop_daemons([d for d in self._daemons if not d.name.startswith("slurmd")])
                for process in self._processes:
                    _reap(process)
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)
                with _REGISTRY.lock():
                    _REGISTRY.remove(self.cluster.token)

    def _controller_running(self) -> bool:
        daemon = next((d for d in self._daemons if d.name == "slurmctld"), None)
        return daemon is not None and _alive(daemon.pid, daemon.create_time)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- starting ----------------------------------------------------------------------

    def _start(self) -> None:
        for sub in ("state", "spool", "run", "jobs"):
            (self.dir / sub).mkdir(parents=True, mode=0o700)
        # munged wants its socket's directory searchable by all (any user may ask it).
        (self.dir / "munge").mkdir(mode=0o755)
        for node in self.nodes:
            (self.dir / "spool" / node).mkdir(mode=0o700)
        self.controller_port = _free_port(self.cluster.gateway)
        self.conf.write_text(self._slurm_conf())
        # slurmd loads a cgroup plugin even when no plugin uses cgroups, and its autodetection
        # fails in a host: `ip netns exec` gave the host a fresh /sys, with no cgroup mounted.
        # cgroup/v1 is loaded without looking; nothing here ever creates a cgroup with it.
        (self.dir / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        self._start_munged()
        self._start_slurmctld()
        for host in self.cluster.hosts:
            self._start_slurmd(host)
        self._wait_for_idle_nodes(time.monotonic() + START_DEADLINE_S)

    def _slurm_conf(self) -> str:
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={CONTROLLER_NAME}({self.cluster.gateway})",
            f"SlurmctldPort={self.controller_port}",
            f"SlurmdPort={SLURMD_PORT}",
            # Bind to the bridge address (SlurmctldHost's), not to every address of the machine.
            "CommunicationParameters=NoCtldInAddrAny",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.dir / 'state'}",
            # %n: the node name; all hosts share the workdir, so each needs its own paths.
            f"SlurmdSpoolDir={self.dir / 'spool' / '%n'}",
            f"SlurmctldPidFile={self.dir / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.dir / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.dir / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups: the hosts are namespaces of one machine, with no delegated cgroup tree.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            # Trust the CPUs written here over what slurmd finds: every host is the same machine.
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "MailProg=/bin/true",  # the default, /bin/mail, is not installed: an error at every start
            "ReturnToService=2",
            f"KillWait={KILL_WAIT_S}",
            "InactiveLimit=0",
            "MessageTimeout=10",
            "SlurmdTimeout=60",
        ]
        for host in self.cluster.hosts:
            lines.append(
                f"NodeName={host.name} NodeAddr={host.address} NodeHostname={host.name} "
                f"CPUs={self.cpus_per_node} State=UNKNOWN"
            )
        lines.append(f"PartitionName={PARTITION} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _start_munged(self) -> None:
        munge_dir = self.dir / "munge"
        key = munge_dir / "munge.key"
        key.touch(mode=0o600)
        key.write_bytes(secrets.token_bytes(1024))
        argv = [
            _program("munged"),
            "--foreground",  # which logs to stderr: munged.out
            # pytest's tmp dirs are 0700, so munged finds the socket "inaccessible" to other
            # users and refuses to start; only root uses it here.
            "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ]
        process = self._spawn("munged", argv)
        self._record(_Daemon("munged", process.pid, _create_time(process.pid)))
        deadline = time.monotonic() + START_DEADLINE_S
        while not self.munge_socket.is_socket():
            self._check_alive(process, "munged")
            if time.monotonic() > deadline:
                raise SlurmError(f"munged made no socket within {START_DEADLINE_S}s\n{self.logs()}")
            time.sleep(0.02)

    def _start_slurmctld(self) -> None:
        # slurmctld binds to what its hostname resolves to (NoCtldInAddrAny) and refuses to
        # run on a host not named in SlurmctldHost. So it gets a hostname and /etc/hosts of
        # its own (UTS and mount namespaces), and keeps the root network namespace.
        hosts_file = self.dir / "run" / "controller-hosts"
        hosts_file.write_text(f"127.0.0.1\tlocalhost\n{self.cluster.gateway}\t{CONTROLLER_NAME}\n")
        init = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        argv = ["unshare", "--uts", "--mount", "--", "sh", "-c", init, "sh", str(hosts_file), CONTROLLER_NAME]
        argv += [_program("slurmctld"), "-D", "-f", str(self.conf)]
        process = self._spawn("slurmctld", argv)
        # unshare and sh exec: the pid is slurmctld's from here on.
        self._record(_Daemon("slurmctld", process.pid, _create_time(process.pid)))
        deadline = time.monotonic() + START_DEADLINE_S
        while not _listens(process.pid, self.cluster.gateway, self.controller_port):
            self._check_alive(process, "slurmctld")
            if time.monotonic() > deadline:
                raise SlurmError(f"slurmctld did not listen within {START_DEADLINE_S}s\n{self.logs()}")
            time.sleep(0.05)

    def _start_slurmd(self, host: TestHost) -> None:
        # The same namespaces as TestHost.run. nsenter forks to enter the PID namespace, so
        # the slurmd is nsenter's child: that child is the daemon we record and stop.
        enter = ["nsenter", "-t", str(host.init_pid), "--net", "--uts", "--pid", "--mount", "--"]
        argv = [*enter, _program("slurmd"), "-D", "-N", host.name, "-f", str(self.conf)]
        name = f"slurmd-{host.name}"
        process = self._spawn(name, argv)
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            self._check_alive(process, name)
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(process.pid).children()
                if children:
                    slurmd = children[0]
                    self._record(_Daemon(name, slurmd.pid, slurmd.create_time()))
                    return
            if time.monotonic() > deadline:
                raise SlurmError(f"{name}: nsenter started no slurmd within {START_DEADLINE_S}s")
            time.sleep(0.01)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # stdout/stderr: what a daemon says before its log file is open (a fatal config error).
        with (self.dir / f"{name}.out").open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                # Keep a Ctrl-C meant for pytest from reaching the daemons; close() stops them.
                start_new_session=True,
            )
        self._processes.append(process)
        return process

    def _record(self, daemon: _Daemon) -> None:
        self._daemons.append(daemon)
        with _REGISTRY.lock():
            _write_record(self.cluster.token, self.dir, self._daemons)

    def _check_alive(self, process: subprocess.Popen[bytes], name: str) -> None:
        if process.poll() is not None:
            raise SlurmError(f"{name} exited with {process.returncode}\n{self.logs()}")

    def _wait_for_idle_nodes(self, deadline: float) -> None:
        states: dict[str, str] = {}
        while True:
            for process, daemon in zip(self._processes, self._daemons, strict=True):
                self._check_alive(process, daemon.name)
            states = self.node_states()
            if sorted(states) == sorted(self.nodes) and set(states.values()) == {"idle"}:
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"nodes not idle within {START_DEADLINE_S}s: {states}\n{self.logs()}")
            time.sleep(0.2)

    # --- stopping ----------------------------------------------------------------------

    def _kill_job_steps(self) -> None:
        """Kill what slurmd left running on the hosts: every slurmstepd and its job processes.

        slurmd starts each slurmstepd through a double fork, so they are not its descendants;
        they are the processes of our hosts running ``slurmstepd``. After a working scancel
        there are none.
        """
        steps: list[psutil.Process] = []
        for host in self.cluster.hosts:
            for pid, _ in host.processes():
                with contextlib.suppress(psutil.Error):
                    process = psutil.Process(pid)
                    if process.name() == "slurmstepd":
                        steps.append(process)
        doomed: list[psutil.Process] = []
        for step in steps:
            with contextlib.suppress(psutil.Error):
                doomed += [step, *step.children(recursive=True)]
        _terminate(doomed)


def start_slurm(cluster: Cluster, cpus_per_node: int | None = None) -> SlurmCluster:
    """Start SLURM on every host of ``cluster``; on return every node is ``idle`` in ``debug``.

    ``cpus_per_node`` defaults to the CPUs this machine has (every host is this machine).
    """
    if not cluster.hosts:
        raise ValueError("the cluster has no hosts")
    missing = missing_slurm_programs()
    if missing:
        raise SlurmError(f"not installed: {', '.join(missing)} (Debian: munge slurmctld slurmd slurm-client)")
    slurm_dir = cluster.workdir / SLURM_DIR_NAME
    with _REGISTRY.lock():
        _remove_stale_locked()  # first: it may clear this very directory of a crashed run
        if slurm_dir.exists() or slurm_dir.is_symlink():
            raise SlurmError(f"{slurm_dir} already exists: SLURM is running on this cluster, or was")
        _write_record(cluster.token, slurm_dir, [])
    slurm = SlurmCluster(cluster, cpus_per_node or os.cpu_count() or 1)
    try:
        slurm._start()
    except BaseException:
        slurm.close()
        raise
    return slurm


def remove_stale_slurms() -> list[str]:
    """Stop the daemons of SLURMs whose creating process has exited; the cluster tokens."""
    with _REGISTRY.lock():
        return _remove_stale_locked()


# --- registry of live SLURMs -----------------------------------------------------------


def _write_record(token: str, slurm_dir: Path, daemons: list[_Daemon]) -> None:
    me = psutil.Process()
    record = {
        "pid": me.pid,
        "create_time": me.create_time(),
        "dir": str(slurm_dir),
        "daemons": [{"name": d.name, "pid": d.pid, "create_time": d.create_time} for d in daemons],
    }
    _REGISTRY.write(token, record)


def _remove_stale_locked() -> list[str]:
    stale = []
    for token, record in _REGISTRY.read_all().items():
        if _alive(record.get("pid"), record.get("create_time")):
            continue
        daemons = []
        for entry in record.get("daemons", []):
            with contextlib.suppress(psutil.Error, TypeError, ValueError):
                if _alive(entry.get("pid"), entry.get("create_time")):
                    daemons.append(psutil.Process(entry["pid"]))
        _terminate(daemons)
        if isinstance(record.get("dir"), str) and Path(record["dir"]).name == SLURM_DIR_NAME:
            shutil.rmtree(record["dir"], ignore_errors=True)
        _REGISTRY.remove(token)
        stale.append(token)
    return sorted(stale)


# --- processes -------------------------------------------------------------------------


def _create_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def _alive(pid: object, create_time: object) -> bool:
    """Whether ``pid`` runs and is the very process that started at ``create_time``."""
    if not isinstance(pid, int) or not isinstance(create_time, float):
        return False
    try:
        process = psutil.Process(pid)
        return bool(process.create_time() == create_time and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _stop_daemons(daemons: list[_Daemon]) -> None:
    processes = []
    for daemon in daemons:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(daemon.pid)
            if process.create_time() == daemon.create_time:
                processes.append(process)
    _terminate(processes)


def _terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM, a grace period, then SIGKILL for the survivors."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=STOP_DEADLINE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=STOP_DEADLINE_S)


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for a process we spawned (its daemon is stopped by now); kill it if it lingers."""
    try:
        process.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- network and programs --------------------------------------------------------------


def _free_port(address: str) -> int:
    """A port free on ``address`` now (slurmctld binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def _listens(pid: int, address: str, port: int) -> bool:
    """Whether ``pid`` listens on ``address:port`` (asked of the kernel: a probe connection
    would be logged by slurmctld as an error)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp4")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and tuple(c.laddr) == (address, port) for c in connections)


def _with_sbin(path: str) -> str:
    parts = path.split(os.pathsep) if path else []
    for directory in ("/usr/sbin", "/sbin"):
        if directory not in parts:
            parts.append(directory)
    return os.pathsep.join(parts)


def _program(name: str) -> str:
    return shutil.which(name, path=_with_sbin(os.environ.get("PATH", ""))) or name
