"""What a run measures: host counts, repetitions, the jobs' parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

HOST_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 253)
MAX_HOSTS = 253
"""The largest cluster the benchmark asks for (``tests/cluster.py`` may allow fewer)."""
HEAVY_FROM_HOSTS = 16
"""From this many hosts on, the torchrun launch runs ``heavy_repeat`` times, not ``repeat``."""
HEAVY_MAX_HOSTS = 32
"""Above this many hosts only the light job is measured (launch, status, kill): every
torch start costs each host ~1.3 CPU-s, and at 64 hosts and more the two cores of the
reference machine would spend minutes on each run."""
MEASURES = ("launch", "control", "ready", "kill", "logs")
"""The measurements, in the order they run at each host count (``--only`` picks some)."""
LIGHT_MEASURES = ("launch", "control")
"""What runs above ``HEAVY_MAX_HOSTS`` (the launch there is the light job's only)."""


@dataclass(frozen=True)
class Plan:
    host_counts: tuple[int, ...]
    """Cluster sizes, one cluster each, smallest first."""
    repeat: int
    """Repetitions of the light launch, of the light job's status and kill, of the torchrun
    launch below ``HEAVY_FROM_HOSTS`` hosts, and (twice as many) of the start-up measurement."""
    heavy_repeat: int
    """Repetitions of what starts torch on every host: time to ready, kill, and the torchrun
    launch from ``HEAVY_FROM_HOSTS`` hosts on. Each start costs two torch imports per host
    (~1.3 CPU-s each): at 32 hosts both cores of the reference machine are busy for about
    a minute per run, which at 3 repetitions would take the whole run past 25 minutes."""
    grace: float = 5.0
    """``launcher kill --grace``: seconds between SIGTERM and SIGKILL."""
    left_after_s: float = 3.0
    """How long after a kill the hosts are searched for what it left."""
    log_rate: float = 100.0
    """Lines per second each host prints in the logs measurement."""
    log_seconds: float = 10.0
    quick: bool = False
    measures: tuple[str, ...] = MEASURES
    """Which of ``MEASURES`` run (start-up runs with ``launch``)."""

    @staticmethod
    def make(
        max_hosts: int,
        repeat: int,
        quick: bool,
        sizes: tuple[int, ...] | None = None,
        measures: tuple[str, ...] = MEASURES,
    ) -> Plan:
        if quick:
            # One cluster of 2 hosts (1 if asked): multi-host paths, under 3 minutes.
            return Plan(
                host_counts=(min(max_hosts, 2),),
                repeat=1,
                heavy_repeat=1,
                log_seconds=4.0,
                quick=True,
                measures=measures,
            )
        if sizes:
            counts = tuple(sorted(set(sizes)))
        else:
            counts = tuple(n for n in HOST_COUNTS if n <= max_hosts)
            if max_hosts not in counts and max_hosts > 0:
                counts += (max_hosts,)
        return Plan(host_counts=counts, repeat=repeat, heavy_repeat=1, measures=measures)

    def launch_repeats(self, hosts: int, torchrun: bool) -> int:
        return self.heavy_repeat if torchrun and hosts >= HEAVY_FROM_HOSTS else self.repeat

    def measures_at(self, hosts: int) -> tuple[str, ...]:
        """What runs on a cluster of ``hosts``: above ``HEAVY_MAX_HOSTS``, the light job only."""
        if hosts > HEAVY_MAX_HOSTS:
            return tuple(m for m in self.measures if m in LIGHT_MEASURES)
        return self.measures

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
