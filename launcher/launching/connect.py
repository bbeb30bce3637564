"""What a launch does before it prepares: connect every host, compare environments, sync.

All three need every host at once (an environment check that names every host that
differs; a sync that commits on every host or on none), so a launch connects to all of
them first; ``prepare`` then reuses these connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from launcher.launching.same_env import check_environment
from launcher.launching.spec import LaunchSpec
from launcher.sync.run import SyncProgress, SyncReport, prepare_tree, sync_agents
from launcher.transport.agent import NodeAgent, SshOptions, open_agent
from launcher.transport.fanout import all_or_nothing


@dataclass(frozen=True)
class CodeRecord:
    """Which code a job runs: for its record and ``status``."""

    fingerprint: str | None = None
    digest: str | None = None
    hosts: dict[str, str] = field(default_factory=dict)
    """Per host, the digest of the tree it reported after the sync."""


async def connect_check_and_sync(
    spec: LaunchSpec,
    ssh: SshOptions,
    agents: list[NodeAgent | None],
    on_sync: Callable[[SyncProgress], None] | None = None,
) -> CodeRecord:
    """Fill ``agents`` (all or nothing), refuse a mismatched environment, sync ``spec.sync_dir``."""
    tree = prepare_tree(spec.sync_dir, spec.sync_max) if spec.sync_dir is not None else None  # before any host
    gate = asyncio.Semaphore(ssh.max_parallel)

    async def connect(index: int) -> None:
        agents[index] = await open_agent(spec.hosts[index], ssh, gate)

    await all_or_nothing([connect(i) for i in range(len(spec.hosts))], spec.hosts, "launch failed, nothing was started")
    opened = [a for a in agents if a is not None]
    if not spec.allow_mismatch:
        check_environment(opened)
    if tree is None:
        return CodeRecord()
    report: SyncReport = await sync_agents(tree, [(a, spec.cwd) for a in opened], on_progress=on_sync)
    return CodeRecord(report.fingerprint, report.digest, {h.host: h.digest or "" for h in report.hosts})
