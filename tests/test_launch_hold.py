"""The middle layer: a held start's supervisor waits for the commit long enough for every
other host to start, then ``COMMIT_WITHIN_S`` more (``local_node.py``: the real agent and
supervisor; the hold is read from the spec the launch wrote on the node)."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from local_node import LocalNode

from launcher.launching.spec import make_spec
from launcher.launching.start import COMMIT_WITHIN_S, START_TIMEOUT_S, launch_job
from launcher.node.rundir import RunDir

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.mark.parametrize("patience", [600.0, 1500.0])
def test_the_hold_counts_from_the_last_hosts_start(tmp_path: Path, patience: float) -> None:
    """A host started first waits while the others start, each for up to the launch's
    patience: its hold must cover that and the commit's own window after it."""
    (tmp_path / "quick.py").write_text("print('ran')\n")
    node = LocalNode.create()
    try:
        node.jobs.add("held")
        spec = make_spec("quick.py", hosts="localhost", name="held", runner="python", cwd=str(tmp_path))
        spec = replace(spec, ssh=replace(spec.ssh, patience=patience))
        with node.environment():
            asyncio.run(launch_job(spec))
            written = RunDir.of("held").read_spec()
    finally:
        node.close()
    assert written is not None and written.hold is not None
    assert written.hold >= max(patience, START_TIMEOUT_S) + COMMIT_WITHIN_S
