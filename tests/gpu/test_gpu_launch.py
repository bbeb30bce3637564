"""Launches on this machine's NVIDIA GPUs through launcher: skipped without one.

The same checks as ``python3 tests/gpu/check_gpus.py`` (see ``launch_checks.py``), as
pytest tests marked ``gpu``: ``python3 -m pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import launch_checks

from launcher.node import gpus

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_count() -> int:
    inventory = gpus.list_gpus()
    if not inventory.gpus:
        pytest.skip(f"no NVIDIA GPU here ({inventory.error or inventory.source})")
    return gpus.default_nproc(inventory, os.environ.get("CUDA_VISIBLE_DEVICES"))


@pytest.fixture
def launcher(gpu_count: int) -> Iterator[launch_checks.Launcher]:
    running = launch_checks.Launcher()
    try:
        yield running
    finally:
        running.close()


def passed(result: launch_checks.Result) -> bool:
    if result.status == "SKIP":
        pytest.skip(result.detail)
    return result.status == "OK"


def test_the_default_is_one_process_per_usable_gpu(launcher: launch_checks.Launcher, gpu_count: int) -> None:
    assert passed(launch_checks.default_nproc(launcher, gpu_count))


def test_a_one_gpu_nccl_job_runs_on_the_gpu(launcher: launch_checks.Launcher) -> None:
    assert passed(launch_checks.one_gpu_job(launcher))


def test_include_picks_nvidia_smis_gpu(launcher: launch_checks.Launcher) -> None:
    assert passed(launch_checks.include(launcher))


def test_mig_include_by_index_is_refused(launcher: launch_checks.Launcher) -> None:
    assert passed(launch_checks.mig(launcher))


def test_a_gpu_held_by_a_process_of_no_job_is_refused(launcher: launch_checks.Launcher) -> None:
    assert passed(launch_checks.busy_gpu(launcher))


def test_kill_leaves_no_gpu_memory_held(launcher: launch_checks.Launcher) -> None:
    assert passed(launch_checks.kill_frees_gpu(launcher))
