"""The ``slurm`` fixture: a real SLURM on 3 hosts of their own, shared by the whole session.

A test module that wants it imports it (``from slurm_fixtures import slurm  # noqa: F401``).
The hosts are not the ``cluster`` fixture's: slurmd and its job steps would show up in the
process tables that other end-to-end tests expect to hold only what their job left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cluster import start_cluster
from conftest import require_root
from slurm_cluster import SlurmCluster, missing_slurm_programs, start_slurm

SLURM_HOSTS = 3


def require_slurm() -> None:
    """Skip a test that needs SLURM when it is not installed; under CI, fail it instead.

    CI installs it (``.ci/setup``), so a missing SLURM there is a broken setup, not a reason
    to let its tests look green.
    """
    missing = missing_slurm_programs()
    if not missing:
        return
    reason = f"SLURM is not installed (missing {', '.join(missing)}; `bash .ci/setup` installs it)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}, and CI is set: refusing to skip the SLURM tests", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Hosts h0, h1, h2, each running slurmd, in partition ``debug``; every node idle at start."""
    require_root()
    require_slurm()
    with (
        start_cluster(SLURM_HOSTS, tmp_path_factory.mktemp("slurm-cluster")) as cluster,
        start_slurm(cluster) as running,
    ):
        yield running
