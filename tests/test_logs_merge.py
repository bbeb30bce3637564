"""``launcher logs`` prints every host's lines merged by time as they come, holding a batch or
two per host (``job/logs.py``'s ``merged_logs``), on the middle layer: a real agent and job."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace

import pytest
from local_node import LocalNode

import launcher
from launcher.hosts.files import LOCALHOST
from launcher.job import logs
from launcher.job.logs import LogLine, merged_logs, read_logs
from launcher.job.records import load_record
from launcher.transport.agent import SshOptions

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/tmux"), reason="needs tmux")

LINES = 30000
QUIET_S = 0.5
"""How long the reader waits to show that the hosts are not read further ahead meanwhile."""


def test_two_hosts_lines_merge_by_time_with_a_bounded_read_ahead(
    node: LocalNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node.environment():
        node.jobs.add("merge")
        printing = (
            f"import sys\nfor i in range({LINES}): print(f'line {{i}}', file=sys.stderr if i % 3 == 0 else sys.stdout)"
        )
        launcher.launch("python3", "-c", printing, hosts="localhost", runner="exec", name="merge").wait()
        # The same node twice, as two hosts: each line comes twice.
        record = replace(load_record("merge"), hosts=(LOCALHOST, LOCALHOST))
        batches_read: list[int] = []
        real = logs._log_lines
        monkeypatch.setattr(
            logs, "_log_lines", lambda host, records: batches_read.append(len(records)) or real(host, records)
        )

        async def first(count: int) -> list[LogLine]:
            taken: list[LogLine] = []
            async for line in merged_logs(record, SshOptions(), {}):
                taken.append(line)
                if len(taken) == count:
                    await asyncio.sleep(QUIET_S)  # time enough to read every batch, were it allowed
                    return taken
            return taken

        early = asyncio.run(first(10))
        read_early = len(batches_read)
        merged, failures = asyncio.run(read_logs(record, SshOptions()))

    assert failures == {}
    assert len(early) == 10 and read_early <= 2 * 3  # two batches ahead per host at most, and the one in use
    texts = [line.text for line in merged if line.rank is None and line.text.startswith("line ")]
    assert sorted(texts) == sorted(f"line {i}" for i in range(LINES) for _ in range(2))
    assert [line.time for line in merged] == sorted(line.time for line in merged)
