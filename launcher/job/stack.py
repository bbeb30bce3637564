"""Stacks: where every rank of a running job is, taken on every host at once (best effort
per host, every host reported), and grouped into a roll-call."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from launcher.errors import message_of
from launcher.hosts.files import Host
from launcher.job import flight_recorder
from launcher.job.records import JobRecord
from launcher.protocol.stack import Frame, RankStack, StackMethod, StackReport, TakeStacks
from launcher.transport.agent import DEFAULT_SSH, SshOptions
from launcher.transport.fanout import ask, for_each_host


@dataclass(frozen=True)
class RankPlace:
    """Where one rank is (or why that could not be told)."""

    host: str
    rank: int
    where: str | None
    """``train_step (train.py:9) -> all_reduce (torch/distributed/distributed_c10d.py)``."""
    method: str | None = None
    """``py-spy`` or ``faulthandler``."""
    path: str | None = None
    """The file on ``host`` with every thread's full stack."""
    error: str | None = None
    pid: int | None = None
    user: Frame | None = None
    library: Frame | None = None
    text: str = ""


@dataclass(frozen=True)
class StackGroup:
    """Ranks at the same place, by rank."""

    where: str
    ranks: tuple[RankPlace, ...]


@dataclass(frozen=True)
class RollCall:
    """The job's ranks grouped by where they are, the largest group first."""

    name: str
    groups: tuple[StackGroup, ...]
    missing: tuple[RankPlace, ...] = ()
    """Ranks whose stack could not be taken, each with its reason."""
    unreachable: tuple[tuple[str, str], ...] = ()
    """``(host, why)`` for each host that could not be asked or has no rank of the job."""
    directories: tuple[tuple[str, str], ...] = ()
    """``(host, <run dir>/stacks/<time>)``: where each host saved the full stacks."""
    flight_recorder: str | None = None
    """``--nccl``: what torch's analyzer says of the ranks' NCCL flight-recorder dumps."""
    flight_recorder_problems: tuple[str, ...] = ()
    """``--nccl``: ``host: rank R: why`` for each rank whose dump could not be had."""

    @property
    def taken(self) -> int:
        return sum(len(g.ranks) for g in self.groups)

    @property
    def total(self) -> int:
        return self.taken + len(self.missing)

    def directories_shown(self) -> list[str]:
        """Where the full stacks are: one line when every host used the same path but for
        its name (``.../runs/<job>/<host>/stacks/<time>``), else one per host."""
        forms = {d.replace(f"/{host}/stacks/", "/<host>/stacks/") for host, d in self.directories}
        if len(self.directories) > 1 and len(forms) == 1:
            return [f"{forms.pop()} on each of {', '.join(h for h, _ in self.directories)}"]
        return [f"{directory} on {host}" for host, directory in self.directories]


def describe(user: Frame | None, library: Frame | None) -> str:
    """One line for a place in the code: the user's frame with its line, the library's without."""
    parts = []
    if user is not None:
        parts.append(f"{user.function} ({user.file}:{user.line})" if user.line else f"{user.function} ({user.file})")
    if library is not None:
        parts.append(f"{library.function} ({library.file})" if library.file.endswith(".py") else library.function)
    return " -> ".join(parts) or "no Python frame"


def roll_call(name: str, reports: Sequence[tuple[str, StackReport | str]]) -> RollCall:
    """Group the ranks of every host's answer (or its error) by where they are."""
    places: list[RankPlace] = []
    unreachable = []
    directories = []
    for host, report in reports:
        if isinstance(report, str):
            unreachable.append((host, report))
            continue
        if report.error is not None:
            unreachable.append((host, report.error))
        if report.directory is not None and any(r.error is None for r in report.ranks):
            directories.append((host, report.directory))
        places.extend(_place(host, r) for r in report.ranks)
    by_where: dict[str, list[RankPlace]] = {}
    for place in places:
        if place.where is not None:
            by_where.setdefault(place.where, []).append(place)
    groups = sorted(
        (StackGroup(where, tuple(sorted(ranks, key=lambda p: p.rank))) for where, ranks in by_where.items()),
        key=lambda g: (-len(g.ranks), g.ranks[0].rank),
    )
    missing = tuple(sorted((p for p in places if p.where is None), key=lambda p: p.rank))
    return RollCall(name, tuple(groups), missing, tuple(unreachable), tuple(directories))


def _place(host: str, stack: RankStack) -> RankPlace:
    where = None if stack.error is not None else describe(stack.user, stack.library)
    return RankPlace(
        host, stack.rank, where, stack.method, stack.path, stack.error, stack.pid, stack.user, stack.library, stack.text
    )


async def take_stacks(
    record: JobRecord,
    ssh: SshOptions = DEFAULT_SSH,
    *,
    native: bool = False,
    ranks: Sequence[int] = (),
    method: StackMethod = "auto",
    timeout: float = 20.0,
    nccl: bool = False,
) -> RollCall:
    """Every rank's stack (only ``ranks``, if given) on every host of ``record`` at once."""
    label = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"  # one directory name on every host
    request = TakeStacks(
        job=record.name,
        native=native,
        ranks=list(ranks) or None,
        method=method,
        timeout=timeout,
        label=label,
        nccl=nccl,
    )

    async def one(host: Host) -> StackReport:
        return await ask(host, ssh, request, timeout=timeout + 60.0)

    results = await for_each_host(record.hosts, one)
    reports: list[tuple[str, StackReport | str]] = [
        (h.label, r if isinstance(r, StackReport) else message_of(r))
        for h, r in zip(record.hosts, results, strict=True)
    ]
    if ranks:  # a host without any of the ranks asked for is no news
        reports = [(h, r) for h, r in reports if isinstance(r, str) or r.ranks or r.error]
    call = roll_call(record.name, reports)
    if not nccl:
        return call
    found = [(host, r) for host, r in reports if isinstance(r, StackReport)]
    dumps = {int(rank): base64.b64decode(data) for _, r in found for rank, data in r.nccl_dumps.items()}
    problems = tuple(f"{host}: {problem}" for host, r in found for problem in r.nccl_problems)
    analysis = await asyncio.to_thread(flight_recorder.analyze, dumps)
    return replace(call, flight_recorder=analysis, flight_recorder_problems=problems)
