"""One test cluster as the benchmark sees it: hosts, files, environment, clean-up.

The cluster library lives in ``tests/cluster.py``; the benchmark imports it from there
rather than keeping a copy that could drift from what the test suite exercises.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.procs import REPO, Proc, census, cpu_seconds, is_job_process, is_shell, signal_all

sys.path.insert(0, str(REPO / "tests"))
from cluster import Cluster, start_cluster  # after the path above

SETTLE_TIMEOUT_S = 30.0
SCRUB_GRACE_S = 2.0
SHELLS_TIMEOUT_S = 20.0
POLL_S = 0.05


@dataclass(frozen=True)
class Site:
    """A running cluster of ``len(hosts)`` hosts and the files every contender uses."""

    cluster: Cluster
    hosts: tuple[str, ...]
    hosts_file: Path
    """One host name per line: read by ``launcher --hosts`` and by ``xargs -a``."""
    output_dir: Path
    """Shared by every host: the recipes redirect their job's output here."""

    @property
    def n(self) -> int:
        return len(self.hosts)

    @property
    def first_address(self) -> str:
        return self.cluster.hosts[0].address

    def env(self) -> dict[str, str]:
        # pdsh's ssh module takes extra ssh options from here; xargs passes -F itself.
        return self.cluster.env(PDSH_SSH_ARGS_APPEND=f"-F {self.cluster.ssh_config}")

    def processes(self) -> dict[str, list[Proc]]:
        """Per host, every live process, its init (sshd) included."""
        return census({h.pid_namespace: h.name for h in self.cluster.hosts})

    def job_processes(self) -> dict[str, list[Proc]]:
        """Per host, every process that is not the host's own (see ``is_job_process``)."""
        init = self._init_pids()
        return {host: [p for p in procs if is_job_process(p, init[host])] for host, procs in self.processes().items()}

    def _init_pids(self) -> dict[str, int]:
        return {h.name: h.init_pid for h in self.cluster.hosts}

    def wait_until_gone(self, timeout: float, ignore: str | None = None) -> float | None:
        """Seconds until no job process is left on any host (``None``: not within ``timeout``).

        Processes whose command line contains ``ignore`` do not count.
        """
        start = time.perf_counter()
        while True:
            left = [p for procs in self.job_processes().values() for p in procs if not (ignore and ignore in p.command)]
            elapsed = time.perf_counter() - start
            if not left:
                return elapsed
            if elapsed > timeout:
                return None
            time.sleep(POLL_S)

    def node_cpu_s(self) -> float:
        """CPU seconds the hosts have used so far, all hosts together.

        Each host's init (its sshd) reaps the SSH sessions, and the daemons orphaned to
        it (tmux servers): their time lands in its children's time. Live processes count
        with their own time and that of the children they reaped.
        """
        total = 0.0
        for proc in (p for procs in self.processes().values() for p in procs):
            try:
                total += cpu_seconds(proc.pid)
            except (OSError, ValueError, IndexError):  # it exited while we looked
                continue
        return total

    def wait_for_sessions_to_end(self, timeout: float = 3.0) -> None:
        """Until no SSH session process is left on any host (so its time is accounted)."""
        deadline = time.monotonic() + timeout
        init = set(self._init_pids().values())
        while time.monotonic() < deadline:
            procs = (p for host_procs in self.processes().values() for p in host_procs)
            if not any(p.command.startswith("sshd:") and p.pid not in init for p in procs):
                return
            time.sleep(POLL_S)

    def scrub(self) -> int:
        """End every process on every host but its sshd; how many there were.

        First wait for the shells to be done, then SIGTERM, then SIGKILL what is left a
        moment later. A shell killed in the middle of its ~/.bashrc can leave a lock behind
        on the shared filesystem (pyenv's rehash lock did, twice, on the reference machine),
        and every login shell on every host, the launching machine's included, then waits
        60 s for it. Every shell the contenders start ends in an ``exec`` or exits.
        """
        deadline = time.monotonic() + SHELLS_TIMEOUT_S
        while self._shells() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        extra = self._not_init()
        signal_all(extra, signal.SIGTERM)
        deadline = time.monotonic() + SCRUB_GRACE_S
        while (left := self._not_init()) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        signal_all(left, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self._not_init() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return len(extra)

    def _shells(self) -> list[Proc]:
        return [p for procs in self.processes().values() for p in procs if is_shell(p)]

    def _not_init(self) -> list[int]:
        init = self._init_pids()
        return [p.pid for host, procs in self.processes().items() for p in procs if p.pid != init[host]]

    def settle(self) -> int:
        """Wait until every host is back to its sshd alone; end what stays (``scrub``). How many stayed.

        Called after each contender stopped its own job, so that nothing one repetition
        started can slow the next; a non-zero answer is a finding (it goes in the report).
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            if not self._not_init():
                return 0
            if time.monotonic() > deadline:
                return self.scrub()
            time.sleep(POLL_S)


@contextlib.contextmanager
def open_site(n: int, workdir: Path) -> Iterator[Site]:
    """Start an ``n``-host cluster in ``workdir``; closing it kills everything on its hosts."""
    with start_cluster(n, workdir) as cluster:
        hosts = tuple(h.name for h in cluster.hosts)
        output_dir = cluster.workdir / "bench-output"
        output_dir.mkdir()
        site = Site(cluster, hosts, cluster.write_hosts_file(list(hosts), "bench-hosts"), output_dir)
        try:
            yield site
        finally:
            site.scrub()  # before close() SIGKILLs whatever is left (see scrub)
