"""Sync: copy a directory to every host, only what changed, on every host or on none.

    plan     every host gets the tree's manifest and answers what it lacks (a re-sync with
             nothing changed ends here: one round trip per host, nothing hashed on either
             side, see ``tree.py`` and ``node/sync.py``)
    stage    the missing content, in chunks over the agent's connection, all hosts at once
             (at most ``parallel`` sending); each host writes it under temporary names
    commit   only once every host staged everything: each renames it into place and sets
             aside what it replaces; a host that fails puts its previous copy back, and the
             others are told to put theirs back too
    finish   every host committed: what was set aside is dropped

A failure anywhere (a host's full disk, a lost connection, a file that changed here while
it was read) leaves every host with its previous good copy, and names the host and file.

Transport: chunks of base64 in the agent's JSON lines, several requests in flight per
host (see the closing note of issue 9 for the measurement against SFTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from launcher.errors import HostError, JobError, LauncherError, UsageError
from launcher.hosts import Host
from launcher.protocol_sync import (
    STAGING_PREFIX,
    SyncAbort,
    SyncCommit,
    SyncCommitted,
    SyncFinish,
    SyncNeeds,
    SyncPlan,
    display_path,
)
from launcher.records import records_dir
from launcher.sync_send import Progress, stage_content
from launcher.sync_send import SyncProgress as SyncProgress  # re-exported: launch and the CLI take it from here
from launcher.transport import NodeAgent, SshOptions, all_or_nothing, open_agent
from launcher.tree import Tree, scan_tree

DEFAULT_SYNC_MAX = 1 << 30
"""Refuse to sync more than this many bytes (``--sync-max``): a dataset or checkpoints by mistake."""
T = TypeVar("T")


class SyncTooLargeError(UsageError):
    """The tree is bigger than the limit: ``size``, ``limit``, ``largest`` (path, bytes)."""

    def __init__(self, size: int, limit: int, largest: list[tuple[str, int]]) -> None:
        self.size = size
        self.limit = limit
        self.largest = largest
        biggest = ", ".join(f"{display_path(p)} {human_bytes(n)}" for p, n in largest)
        super().__init__(
            f"refusing to sync {human_bytes(size)}, more than --sync-max {human_bytes(limit)}; "
            f"the largest: {biggest} (ignore them in .gitignore or .launcherignore, or raise --sync-max)"
        )


@dataclass(frozen=True)
class HostSync:
    """What the sync did (or, in a dry run, would do) on one host."""

    host: str
    copied: tuple[str, ...]
    bytes: int
    deleted: tuple[str, ...]
    digest: str | None = None
    """The tree's digest as the node computed it after the commit (None: dry run)."""
    source: bool = False
    """Its directory is the source itself (a shared disk, or this machine): left alone."""


@dataclass(frozen=True)
class SyncReport:
    source: str
    remote_dir: str
    fingerprint: str
    digest: str
    files: int
    size: int
    hosts: tuple[HostSync, ...]
    dry_run: bool = False

    @property
    def same_everywhere(self) -> bool:
        """Every host reported the tree this machine sent."""
        return all(h.digest == self.digest for h in self.hosts)


def parse_size(value: int | str, option: str = "--sync-max") -> int:
    """Bytes from ``1073741824``, ``500M``, ``1GiB``, ``2.5G`` (K, M, G, T are powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f"{option} must be >= 0, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value), re.IGNORECASE)
    if match is None:
        raise UsageError(f"{option} must be a size such as 500M or 1G, got {value!r}")
    unit = match[2].lower()
    return int(float(match[1]) * (1024 ** ("kmgt".index(unit) + 1) if unit else 1))


def cache_dir() -> Path:
    """Where this machine keeps its hashes between syncs (next to the job records)."""
    return records_dir().parent / "sync-cache"


def prepare_tree(source: str, max_bytes: int = DEFAULT_SYNC_MAX) -> Tree:
    """The tree to sync, checked before any host is contacted."""
    if max_bytes < 0:
        raise UsageError(f"--sync-max must be >= 0, got {max_bytes}")
    tree = scan_tree(source, cache_dir())
    if tree.size > max_bytes:
        raise SyncTooLargeError(tree.size, max_bytes, tree.largest())
    return tree


async def sync_tree(
    source: str,
    hosts: Sequence[Host],
    *,
    remote_dir: str | None = None,
    ssh: SshOptions | None = None,
    max_bytes: int = DEFAULT_SYNC_MAX,
    dry_run: bool = False,
    on_progress: Callable[[SyncProgress], None] | None = None,
) -> SyncReport:
    """Copy ``source`` to ``remote_dir`` (default: the same path) on every host, or on none."""
    tree = prepare_tree(source, max_bytes)
    remote = check_remote_dir(remote_dir or tree.root)
    ssh = ssh or SshOptions()
    gate = asyncio.Semaphore(ssh.max_parallel)
    agents: list[NodeAgent] = []

    async def connect(host: Host) -> None:
        agents.append(await open_agent(host, ssh, gate))

    try:
        await all_or_nothing([connect(h) for h in hosts], hosts, "sync failed, nothing changed")
        ordered = sorted(agents, key=lambda a: list(hosts).index(a.host))
        return await sync_agents(tree, [(a, remote) for a in ordered], dry_run=dry_run, on_progress=on_progress)
    finally:
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)


def check_remote_dir(path: str) -> str:
    if not path.startswith("/"):
        raise UsageError(f"--remote-dir must be an absolute path, got {display_path(path)}")
    return os.path.normpath(path)


async def sync_agents(
    tree: Tree,
    targets: Sequence[tuple[NodeAgent, str]],
    *,
    dry_run: bool = False,
    on_progress: Callable[[SyncProgress], None] | None = None,
    parallel: int = 32,
) -> SyncReport:
    """Sync ``tree`` over open agents, each to its directory; every host commits, or none."""
    token = secrets.token_hex(6)
    entries = list(tree.entries)
    every = [agent for agent, _ in targets]
    agents = every  # those to abort if anything fails
    try:
        with _source_marker(tree, token) as marker:
            plans: list[SyncNeeds] = await all_or_nothing(
                [_plan(a, root, token, tree, marker) for a, root in targets],
                [a.host for a in every],
                "sync failed, nothing changed",
            )
        # A host whose directory is the source itself has nothing to stage, commit or finish.
        syncing = [i for i, plan in enumerate(plans) if not plan.source]
        agents = [every[i] for i in syncing]
        sizes = [sum(entries[i].size for i in plan.needed) for plan in plans]
        committed: dict[int, SyncCommitted | None] = {}
        if not dry_run:
            progress = Progress(sum(sizes[i] for i in syncing), len(syncing), on_progress)
            semaphore = asyncio.Semaphore(parallel)

            async def stage(index: int) -> None:
                async with semaphore:
                    await stage_content(every[index], token, tree, plans[index].needed, progress)
                    progress.host_done()

            await all_or_nothing(
                [stage(i) for i in syncing],
                [a.host for a in agents],
                "sync failed, every host keeps its previous copy",
            )
            committed = dict(zip(syncing, await _commit(agents, token), strict=True))
    except BaseException:
        await asyncio.shield(_abort(agents, token))
        raise
    if dry_run:
        await _abort(agents, token)
    else:
        await asyncio.gather(*(a.call(SyncFinish(token=token), timeout=120) for a in agents), return_exceptions=True)

    def digest(index: int) -> str | None:
        done = committed.get(index)
        return tree.digest if plans[index].source else done.digest if done else None

    return SyncReport(
        source=tree.root,
        remote_dir=targets[0][1] if targets else tree.root,
        fingerprint=tree.fingerprint,
        digest=tree.digest,
        files=len(entries),
        size=tree.size,
        hosts=tuple(
            HostSync(
                host=agent.host.label,
                copied=tuple(entries[i].path for i in plan.needed),
                bytes=sizes[index],
                deleted=tuple(plan.deleted),
                digest=digest(index),
                source=plan.source,
            )
            for index, (agent, plan) in enumerate(zip(every, plans, strict=True))
        ),
        dry_run=dry_run,
    )


async def _plan(agent: NodeAgent, root: str, token: str, tree: Tree, marker: str) -> SyncNeeds:
    """By the tree's digest first: a host that has it intact needs nothing more."""
    needs = await agent.call(SyncPlan(root=root, token=token, digest=tree.digest, marker=marker), timeout=120)
    if needs.unknown:
        needs = await agent.call(SyncPlan(root=root, token=token, entries=list(tree.entries)), timeout=120)
    return needs


@contextlib.contextmanager
def _source_marker(tree: Tree, token: str) -> Iterator[str]:
    """A file in the source while hosts plan, so that a host whose directory is the source
    itself (a shared disk, or this machine) says so instead of syncing onto it."""
    name = f"{STAGING_PREFIX}source-{token}"
    path = os.path.join(tree.root, name)
    try:
        with open(path, "x"):
            pass
    except OSError:
        yield ""  # a read-only source: no host can delete from it either
        return
    try:
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _commit(agents: Sequence[NodeAgent], token: str) -> list[SyncCommitted | None]:
    """Commit everywhere; if one host fails, the others put their previous copy back."""
    results = await asyncio.gather(
        *(a.call(SyncCommit(token=token), timeout=300) for a in agents), return_exceptions=True
    )
    failures = {a.host.label: r for a, r in zip(agents, results, strict=True) if isinstance(r, HostError)}
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, HostError):
            raise result
    if failures:
        raise JobError("sync failed, every host keeps its previous copy", failures)
    return [r if isinstance(r, SyncCommitted) else None for r in results]


async def _abort(agents: Sequence[NodeAgent], token: str) -> None:
    async def abort(agent: NodeAgent) -> None:
        with contextlib.suppress(LauncherError):  # a lost host has nothing committed to undo
            await agent.call(SyncAbort(token=token), timeout=60)

    await asyncio.gather(*(abort(a) for a in agents))


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
