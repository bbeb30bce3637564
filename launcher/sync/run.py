"""Sync: copy a directory to every host, only what changed, on every host or on none.

    plan     every host gets the tree's digest and answers whether it holds that tree
             intact (a re-sync with nothing changed ends here: one round trip per host,
             nothing hashed on either side, see ``tree.py`` and ``node/sync.py``); each also
             leaves a probe in its directory's hidden state
    look     every host says whose probes it sees: hosts that see each other's share their
             directory (a scratch or home on a shared disk), and only the first of them,
             in hosts order, writes it (``commit.py``)
    lock     each writer takes its directory's lock (a second sync into it is refused),
             rolls back a commit left unfinished there, and answers what it lacks
    stage    the missing content, in chunks over the agent's connection, all writers at
             once (at most ``parallel`` sending), under temporary names
    commit   only once every writer staged everything: each renames it into place and sets
             aside what it replaces, every step in a journal on its disk first; a writer
             that fails puts its previous copy back, and the others are told to put theirs
             back too. Then the other hosts of each shared directory check that they see it
    finish   every host committed: the journal and what was set aside are dropped

A failure anywhere (a host's full disk, a lost connection, a file that changed here while
it was read) leaves every host with its previous good copy, and names the host and file.

Transport: chunks of base64 in the agent's JSON lines, several requests in flight per
host (see the closing note of issue 9 for the measurement against SFTP), each chunk read,
hashed and encoded once for all hosts (``chunks.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from launcher.errors import UsageError
from launcher.hosts.files import Host
from launcher.protocol.paths import sync_cache_dir
from launcher.protocol.sync import STAGING_PREFIX, SyncCommitted, SyncNeeds, SyncPlan, display_path
from launcher.sync import commit as steps
from launcher.sync.chunks import Chunks
from launcher.sync.send import Progress, stage_content
from launcher.sync.send import SyncProgress as SyncProgress  # re-exported: launch and the CLI take it from here
from launcher.sync.tree import Tree, scan_tree
from launcher.transport.agent import NodeAgent, SshOptions, open_agent
from launcher.transport.fanout import all_or_nothing

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


@dataclasses.dataclass(frozen=True)
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
    writer: str | None = None
    """Its directory is the one this other host wrote (a disk they share): it only checked
    the result. ``copied`` and ``deleted`` are what that host did there."""


@dataclasses.dataclass(frozen=True)
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


def prepare_tree(source: str, max_bytes: int = DEFAULT_SYNC_MAX) -> Tree:
    """The tree to sync, checked before any host is contacted."""
    if max_bytes < 0:
        raise UsageError(f"--sync-max must be >= 0, got {max_bytes}")
    tree = scan_tree(source, sync_cache_dir())
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
    slots: list[NodeAgent | None] = [None] * len(hosts)  # in hosts order, as they connect

    async def connect(index: int) -> None:
        slots[index] = await open_agent(hosts[index], ssh, gate)

    try:
        await all_or_nothing([connect(i) for i in range(len(hosts))], hosts, steps.NOTHING_CHANGED)
        agents = [a for a in slots if a is not None]
        return await sync_agents(tree, [(a, remote) for a in agents], dry_run=dry_run, on_progress=on_progress)
    finally:
        await asyncio.gather(*(a.close() for a in slots if a is not None), return_exceptions=True)


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
    every = [agent for agent, _ in targets]
    live = every  # those with a session to close if anything fails
    probe = not dry_run and len(targets) > 1  # one host shares its directory with no other
    try:
        with _source_marker(tree, token) as marker:
            plans: list[SyncNeeds] = await all_or_nothing(
                [_plan(a, r, token, tree, marker=marker, probe=probe, manifest=dry_run) for a, r in targets],
                _hosts(every),
                steps.NOTHING_CHANGED,
            )
        # A host whose directory is the source itself has nothing to stage, commit or finish.
        syncing = [i for i, plan in enumerate(plans) if not plan.source]
        live = [every[i] for i in syncing]
        writer = {i: i for i in syncing}
        if dry_run or all(_intact(plans[i]) for i in syncing):
            await steps.abort(live, token)  # nothing to write anywhere: close the plans
            return _report(tree, targets, plans, writer, {}, dry_run)
        if len(syncing) > 1:
            groups = await steps.writers_of(live, [plans[i].probe for i in syncing], token)
            writer = {i: syncing[g] for i, g in zip(syncing, groups, strict=True)}
        busy = sorted({writer[i] for i in syncing if not _intact(plans[i])})
        checkers = [i for i in syncing if writer[i] in busy and writer[i] != i]
        writers = [every[w] for w in busy]
        locked = [_plan(every[w], targets[w][1], token, tree, lock=True, known=plans[w]) for w in busy]
        for index, plan in zip(busy, await all_or_nothing(locked, _hosts(writers), steps.NOTHING_CHANGED), strict=True):
            plans[index] = plan
        await _stage(tree, writers, [plans[w] for w in busy], token, on_progress, parallel)
        committed = dict(zip(busy, await steps.commit(writers, token), strict=True))
        checked = await steps.verify([every[i] for i in checkers], token, tree.digest)
        committed.update(zip(checkers, checked, strict=True))
    except BaseException:
        await asyncio.shield(steps.abort(live, token))
        raise
    idle = [every[i] for i in syncing if i not in committed]
    ends = [steps.abort(idle, token), steps.finish([every[i] for i in committed], token)]
    for end in await asyncio.gather(*ends, return_exceptions=True):
        if isinstance(end, BaseException):
            raise end
    return _report(tree, targets, plans, writer, committed, dry_run)


def _hosts(agents: Sequence[NodeAgent]) -> list[Host]:
    return [a.host for a in agents]


def _intact(plan: SyncNeeds) -> bool:
    """Nothing to do on that host: it holds the tree (by its digest)."""
    return not (plan.unknown or plan.needed or plan.deleted)


async def _stage(
    tree: Tree,
    agents: Sequence[NodeAgent],
    plans: Sequence[SyncNeeds],
    token: str,
    on_progress: Callable[[SyncProgress], None] | None,
    parallel: int,
) -> None:
    """The content each host lacks, at most ``parallel`` hosts at once."""
    sizes = [sum(tree.entries[i].size for i in plan.needed) for plan in plans]
    progress = Progress(sum(sizes), len(agents), on_progress)
    semaphore = asyncio.Semaphore(parallel)
    chunks = Chunks(tree)  # each chunk read and encoded once for all the hosts

    async def stage(agent: NodeAgent, plan: SyncNeeds) -> None:
        async with semaphore:
            await stage_content(agent, token, chunks, plan.needed, progress)
            progress.host_done()

    try:
        await all_or_nothing([stage(a, p) for a, p in zip(agents, plans, strict=True)], _hosts(agents), steps.KEPT)
    finally:
        chunks.close()


def _report(
    tree: Tree,
    targets: Sequence[tuple[NodeAgent, str]],
    plans: Sequence[SyncNeeds],
    writer: dict[int, int],
    committed: dict[int, SyncCommitted],
    dry_run: bool,
) -> SyncReport:
    entries = tree.entries

    def host(index: int) -> HostSync:
        shares = writer.get(index, index)
        plan, done = plans[shares], committed.get(index)
        # After a real sync: the source, a host that held the tree already, or one that committed it.
        digest = done.digest if done else tree.digest if plan.source or not dry_run else None
        return HostSync(
            host=targets[index][0].host.label,
            copied=tuple(entries[i].path for i in plan.needed),
            bytes=sum(entries[i].size for i in plan.needed),
            deleted=tuple(plan.deleted),
            digest=digest,
            source=plans[index].source,
            writer=targets[shares][0].host.label if shares != index else None,
        )

    return SyncReport(
        source=tree.root,
        remote_dir=targets[0][1] if targets else tree.root,
        fingerprint=tree.fingerprint,
        digest=tree.digest,
        files=len(entries),
        size=tree.size,
        hosts=tuple(host(i) for i in range(len(targets))),
        dry_run=dry_run,
    )


async def _plan(
    agent: NodeAgent,
    root: str,
    token: str,
    tree: Tree,
    *,
    marker: str = "",
    probe: bool = False,
    lock: bool = False,
    manifest: bool = True,
    known: SyncNeeds | None = None,
) -> SyncNeeds:
    """By the tree's digest first: a host that has it intact needs nothing more. Then, if
    ``manifest``, the manifest (a real sync's first plan stops at the digest: only the
    writers' plans need the manifest). ``known``: what the host said to the digest already."""
    ask = SyncPlan(root=root, token=token, digest=tree.digest, marker=marker, probe=probe, lock=lock)
    needs = known if known is not None and known.unknown else await agent.call(ask, timeout=120)
    if needs.unknown and manifest:
        needs = await agent.call(dataclasses.replace(ask, entries=list(tree.entries), digest=""), timeout=120)
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


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
