"""``launcher.context()``: the same answers under launcher, torchrun, srun and plain python.

Table-driven over the environments each way of starting a script sets, then real
processes: torchrun with 2 ranks, and a plain ``python -c``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from launcher.errors import LauncherError, UsageError
from launcher.run_context import ContextError, context

# Through sys.modules, not `import launcher.context as ...`: that reads the package's
# attribute, which becomes the function once launcher/__init__.py exports `context`.
ctx: ModuleType = importlib.import_module("launcher.run_context")
gpus_module: ModuleType = importlib.import_module("launcher.visible_gpus")
REPO = Path(__file__).resolve().parent.parent

# Every variable context() reads, removed from the environment of the real processes.
READ = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "NNODES",
    "NPROC_PER_NODE",
    "LAUNCHER_JOB",
    "LAUNCHER_ATTEMPT",
    "CUDA_VISIBLE_DEVICES",
)


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NVIDIA driver, and torch not asked, whatever this machine has."""
    monkeypatch.setattr(gpus_module, "_NVIDIA_GPUS", tmp_path / "no-driver")
    monkeypatch.setattr(gpus_module, "_torch_gpu_count", lambda: None)


def fake_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, count: int) -> None:
    """A driver listing ``count`` GPUs, as /proc/driver/nvidia/gpus does (one directory each)."""
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    for index in range(count):
        (gpus / f"0000:{index + 1:02x}:00.0").mkdir()
    monkeypatch.setattr(gpus_module, "_NVIDIA_GPUS", gpus)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, count: int) -> None:
    """``count`` GPUs from the driver, and torch not asked (as when the script has not imported it)."""
    fake_driver(monkeypatch, tmp_path, count)
    monkeypatch.setattr(gpus_module, "_torch_gpu_count", lambda: None)


TORCHRUN_NODE1_RANK6 = {  # what torchrun sets for global rank 6: node 1 of 2, 4 ranks per node
    "RANK": "6",
    "LOCAL_RANK": "2",
    "WORLD_SIZE": "8",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "4",
    "ROLE_RANK": "6",
    "ROLE_NAME": "default",
    "ROLE_WORLD_SIZE": "8",
    "MASTER_ADDR": "10.1.0.11",
    "MASTER_PORT": "41327",
    "TORCHELASTIC_RUN_ID": "train-261121-101500",
    "TORCHELASTIC_RESTART_COUNT": "0",
}
SRUN_TASK3_OF_4 = {  # `srun -N 2 -n 4`: task 3 is the second task on the second node
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "4",
    "SLURM_NNODES": "2",
    "SLURM_STEP_NUM_TASKS": "4",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURMD_NODENAME": "gpu07",
}
SRUN_ONE_TASK_PER_NODE = {  # `srun -N 2 --ntasks-per-node 1 torchrun ...`, on the second node
    **SRUN_TASK3_OF_4,
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
}
SBATCH_SCRIPT = {  # the batch script itself: one process, though the allocation has 8 tasks
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS": "8",
    "SLURM_NNODES": "2",
    "SLURMD_NODENAME": "gpu07",
}
RUNNER_PYTHON_NODE1 = {  # launcher launch --runner python --nproc-per-node 4, 3 hosts, on the second
    "MASTER_ADDR": "10.1.0.11",
    "MASTER_PORT": "41327",
    "NODE_RANK": "1",
    "NNODES": "3",
    "NPROC_PER_NODE": "4",
    "WORLD_SIZE": "12",
    "LAUNCHER_JOB": "prep-261121-101500",
}

# id, environment, (source, rank, local_rank, world_size, node_rank, nnodes), launcher_job
CASES: list[tuple[str, dict[str, str], tuple[str, int, int, int, int, int], str | None]] = [
    (
        "launcher torchrun",
        {**TORCHRUN_NODE1_RANK6, "LAUNCHER_JOB": "train-261121-101500"},
        ("torchrun", 6, 2, 8, 1, 2),
        "train-261121-101500",
    ),
    ("plain torchrun", TORCHRUN_NODE1_RANK6, ("torchrun", 6, 2, 8, 1, 2), None),
    (
        "plain torchrun, rank 0 of 2",
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1"},
        ("torchrun", 0, 0, 2, 0, 1),
        None,
    ),
    ("srun -n 4", SRUN_TASK3_OF_4, ("slurm", 3, 1, 4, 1, 2), None),
    ("srun, old SLURM_STEPID spelling", {**SRUN_TASK3_OF_4, "SLURM_STEP_ID": ""}, ("slurm", 3, 1, 4, 1, 2), None),
    (
        "srun --preserve-env: the step's counts, not the allocation's",
        {**SRUN_TASK3_OF_4, "SLURM_NTASKS": "16", "SLURM_NNODES": "4"},
        ("slurm", 3, 1, 4, 1, 2),
        None,
    ),
    (
        "srun older than SLURM_STEP_NUM_*",
        {k: v for k, v in SRUN_TASK3_OF_4.items() if not k.startswith("SLURM_STEP_NUM")},
        ("slurm", 3, 1, 4, 1, 2),
        None,
    ),
    (
        "srun + torchrun: torchrun wins",
        {**SRUN_ONE_TASK_PER_NODE, **TORCHRUN_NODE1_RANK6},
        ("torchrun", 6, 2, 8, 1, 2),
        None,
    ),
    (
        "srun + launcher torchrun: torchrun wins",
        {**SRUN_TASK3_OF_4, **TORCHRUN_NODE1_RANK6, "LAUNCHER_JOB": "j"},
        ("torchrun", 6, 2, 8, 1, 2),
        "j",
    ),
    ("sbatch script without srun: one process", SBATCH_SCRIPT, ("single", 0, 0, 1, 0, 1), None),
    ("launcher --runner python", RUNNER_PYTHON_NODE1, ("launcher", 4, 0, 12, 1, 3), "prep-261121-101500"),
    (
        "launcher --runner python, a worker the script started",
        {**RUNNER_PYTHON_NODE1, "LOCAL_RANK": "3"},
        ("launcher", 7, 3, 12, 1, 3),
        "prep-261121-101500",
    ),
    (
        "launcher --runner python inside an srun step: launcher wins",
        {**SRUN_TASK3_OF_4, **RUNNER_PYTHON_NODE1},
        ("launcher", 4, 0, 12, 1, 3),
        "prep-261121-101500",
    ),
    (
        "launcher --runner python, no NPROC_PER_NODE",
        {"NODE_RANK": "2", "NNODES": "3", "WORLD_SIZE": "6"},
        ("launcher", 4, 0, 6, 2, 3),
        None,
    ),
    (
        "launcher --runner python under torchrun: torchrun wins",
        {**RUNNER_PYTHON_NODE1, **TORCHRUN_NODE1_RANK6},
        ("torchrun", 6, 2, 8, 1, 2),
        "prep-261121-101500",
    ),
    ("NODE_RANK alone is not launcher's", {"NODE_RANK": "1"}, ("single", 0, 0, 1, 0, 1), None),
    ("plain python", {}, ("single", 0, 0, 1, 0, 1), None),
    ("plain python, unrelated variables", {"MASTER_ADDR": "x", "WORLD_SIZE": "4"}, ("single", 0, 0, 1, 0, 1), None),
    ("empty values count as unset", {"RANK": "", "NODE_RANK": "", "LAUNCHER_JOB": ""}, ("single", 0, 0, 1, 0, 1), None),
    ("env:// by hand, one node", {"RANK": "2", "WORLD_SIZE": "4"}, ("torchrun", 2, 2, 4, 0, 1), None),
    (
        "env:// by hand with LOCAL_WORLD_SIZE",
        {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"},
        ("torchrun", 5, 1, 8, 1, 2),
        None,
    ),
    (
        "env:// by hand under srun (RANK=$SLURM_PROCID): the rest from SLURM",
        {**SRUN_TASK3_OF_4, "RANK": "3", "WORLD_SIZE": "4"},
        ("torchrun", 3, 1, 4, 1, 2),
        None,
    ),
    ("values with surrounding blanks", {"RANK": " 1", "WORLD_SIZE": "2\n"}, ("torchrun", 1, 1, 2, 0, 1), None),
]


@pytest.mark.usefixtures("no_gpus")
@pytest.mark.parametrize(("env", "expected", "job"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_context_from_environment(
    env: dict[str, str], expected: tuple[str, int, int, int, int, int], job: str | None
) -> None:
    got = context(env)
    assert (got.source, got.rank, got.local_rank, got.world_size, got.node_rank, got.nnodes) == expected
    assert got.launcher_job == job
    assert got.attempt == 1  # no LAUNCHER_ATTEMPT: the first attempt
    assert got.is_main == (got.rank == 0)
    assert got.device == "cpu"
    assert got.host == env.get("SLURMD_NODENAME", socket.gethostname())


@pytest.mark.usefixtures("no_gpus")
def test_nproc_per_node_cpu_and_auto_count_cpus_like_torchrun() -> None:
    cpus = os.cpu_count() or 1
    for spec in ("cpu", "auto"):
        got = context({"NODE_RANK": "1", "NNODES": "2", "NPROC_PER_NODE": spec})
        assert (got.rank, got.world_size) == (cpus, 2 * cpus)


def test_nproc_per_node_gpu_counts_visible_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_gpus(monkeypatch, tmp_path, 8)
    got = context({"NODE_RANK": "1", "NNODES": "2", "NPROC_PER_NODE": "gpu", "CUDA_VISIBLE_DEVICES": "0,1,2"})
    assert (got.rank, got.world_size, got.device) == (3, 6, "cuda:0")


# id, environment, attempt
ATTEMPTS: list[tuple[str, dict[str, str], int]] = [
    ("unset: the first", {}, 1),
    ("empty counts as unset", {"LAUNCHER_ATTEMPT": ""}, 1),
    ("at launch", {"LAUNCHER_ATTEMPT": "1"}, 1),
    ("after the first restart", {"LAUNCHER_ATTEMPT": "2"}, 2),
    ("with surrounding blanks", {"LAUNCHER_ATTEMPT": " 12\n"}, 12),
    ("under torchrun", {**TORCHRUN_NODE1_RANK6, "LAUNCHER_ATTEMPT": "3"}, 3),
    ("under --runner python", {**RUNNER_PYTHON_NODE1, "LAUNCHER_ATTEMPT": "3"}, 3),
    ("under srun", {**SRUN_TASK3_OF_4, "LAUNCHER_ATTEMPT": "4"}, 4),
    ("torchrun's own restart count is not ours", {**TORCHRUN_NODE1_RANK6, "TORCHELASTIC_RESTART_COUNT": "5"}, 1),
]


@pytest.mark.usefixtures("no_gpus")
@pytest.mark.parametrize(("env", "attempt"), [case[1:] for case in ATTEMPTS], ids=[case[0] for case in ATTEMPTS])
def test_attempt_from_launcher_attempt_whatever_the_source(env: dict[str, str], attempt: int) -> None:
    assert context(env).attempt == attempt


BAD: list[tuple[str, dict[str, str], str, str]] = [
    # id, environment, the variable blamed, a piece of the message
    ("RANK=abc", {"RANK": "abc", "WORLD_SIZE": "2"}, "RANK", "RANK='abc' is not a whole number"),
    ("RANK=-1", {"RANK": "-1", "WORLD_SIZE": "2"}, "RANK", "RANK='-1' is not a whole number"),
    ("RANK=1.0", {"RANK": "1.0", "WORLD_SIZE": "2"}, "RANK", "not a whole number"),
    ("RANK=+1", {"RANK": "+1", "WORLD_SIZE": "2"}, "RANK", "not a whole number"),
    ("RANK=1_0", {"RANK": "1_0", "WORLD_SIZE": "20"}, "RANK", "not a whole number"),
    ("non-ASCII digit", {"RANK": "\u0661", "WORLD_SIZE": "2"}, "RANK", "not a whole number"),
    ("WORLD_SIZE=two", {"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE", "WORLD_SIZE='two'"),
    ("RANK without WORLD_SIZE", {"RANK": "1"}, "WORLD_SIZE", "RANK is set but WORLD_SIZE is not"),
    ("RANK not below WORLD_SIZE", {"RANK": "2", "WORLD_SIZE": "2"}, "RANK", "rank 2 (RANK) is not below"),
    ("WORLD_SIZE=0", {"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE", "at least 1 process"),
    ("LOCAL_RANK=$(id)", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "$(id)"}, "LOCAL_RANK", "'$(id)'"),
    ("LOCAL_RANK too big", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "5"}, "LOCAL_RANK", "local rank 5"),
    (
        "LOCAL_RANK not below LOCAL_WORLD_SIZE",
        {"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "4", "LOCAL_WORLD_SIZE": "4"},
        "LOCAL_RANK",
        "local rank 4 (LOCAL_RANK) is not below the 4 process(es) per node (LOCAL_WORLD_SIZE)",
    ),
    ("LOCAL_WORLD_SIZE=0", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE", "at least 1"),
    (
        "GROUP_RANK not below GROUP_WORLD_SIZE",
        {"RANK": "0", "WORLD_SIZE": "2", "GROUP_RANK": "2", "GROUP_WORLD_SIZE": "2"},
        "GROUP_RANK",
        "node rank 2 (GROUP_RANK)",
    ),
    ("GROUP_WORLD_SIZE=0", {"RANK": "0", "WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "0"}, "GROUP_WORLD_SIZE", "1 node"),
    ("SLURM_PROCID=x", {**SRUN_TASK3_OF_4, "SLURM_PROCID": "x"}, "SLURM_PROCID", "SLURM_PROCID='x'"),
    (
        "srun task without SLURM_LOCALID",
        {k: v for k, v in SRUN_TASK3_OF_4.items() if k != "SLURM_LOCALID"},
        "SLURM_LOCALID",
        "SLURM_PROCID is set but SLURM_LOCALID is not",
    ),
    (
        "SLURM_NODEID not below the node count",
        {**SRUN_TASK3_OF_4, "SLURM_NODEID": "2"},
        "SLURM_NODEID",
        "node rank 2 (SLURM_NODEID)",
    ),
    (
        "SLURM_STEP_NUM_TASKS=four",
        {**SRUN_TASK3_OF_4, "SLURM_STEP_NUM_TASKS": "four"},
        "SLURM_STEP_NUM_TASKS",
        "'four'",
    ),
    (
        "bad SLURM_LOCALID under hand-written env://",
        {**SRUN_TASK3_OF_4, "SLURM_LOCALID": "?", "RANK": "3", "WORLD_SIZE": "4"},
        "SLURM_LOCALID",
        "SLURM_LOCALID='?'",
    ),
    ("NODE_RANK=one", {"NODE_RANK": "one", "NNODES": "2"}, "NODE_RANK", "NODE_RANK='one'"),
    ("NNODES=two", {"NODE_RANK": "0", "NNODES": "two"}, "NNODES", "NNODES='two'"),
    ("NODE_RANK not below NNODES", {"NODE_RANK": "2", "NNODES": "2"}, "NODE_RANK", "node rank 2 (NODE_RANK)"),
    ("NNODES=0", {"NODE_RANK": "0", "NNODES": "0"}, "NNODES", "at least 1 node"),
    ("NPROC_PER_NODE=many", {**RUNNER_PYTHON_NODE1, "NPROC_PER_NODE": "many"}, "NPROC_PER_NODE", "'many'"),
    ("NPROC_PER_NODE=0", {**RUNNER_PYTHON_NODE1, "NPROC_PER_NODE": "0"}, "NPROC_PER_NODE", "at least 1"),
    (
        "NPROC_PER_NODE=gpu, no GPU",
        {**RUNNER_PYTHON_NODE1, "NPROC_PER_NODE": "gpu"},
        "NPROC_PER_NODE",
        "no GPU is visible",
    ),
    (
        "LOCAL_RANK not below NPROC_PER_NODE",
        {**RUNNER_PYTHON_NODE1, "LOCAL_RANK": "4"},
        "LOCAL_RANK",
        "LOCAL_RANK=4 is not below the 4 process(es)",
    ),
    (
        "launcher WORLD_SIZE smaller than the ranks",
        {**RUNNER_PYTHON_NODE1, "WORLD_SIZE": "4"},
        "NODE_RANK",
        "rank 4 (NODE_RANK) is not below the world size 4",
    ),
    ("LAUNCHER_ATTEMPT=0", {"LAUNCHER_ATTEMPT": "0"}, "LAUNCHER_ATTEMPT", "LAUNCHER_ATTEMPT=0: attempts count from 1"),
    ("LAUNCHER_ATTEMPT=-1", {"LAUNCHER_ATTEMPT": "-1"}, "LAUNCHER_ATTEMPT", "'-1' is not a whole number"),
    ("LAUNCHER_ATTEMPT=two", {"LAUNCHER_ATTEMPT": "two"}, "LAUNCHER_ATTEMPT", "'two' is not a whole number"),
    ("LAUNCHER_ATTEMPT=1.0", {"LAUNCHER_ATTEMPT": "1.0"}, "LAUNCHER_ATTEMPT", "not a whole number"),
    (
        "bad LAUNCHER_ATTEMPT under torchrun",
        {**TORCHRUN_NODE1_RANK6, "LAUNCHER_ATTEMPT": "$(id)"},
        "LAUNCHER_ATTEMPT",
        "'$(id)'",
    ),
]


@pytest.mark.usefixtures("no_gpus")
@pytest.mark.parametrize(("env", "variable", "message"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_values_raise_naming_the_variable(env: dict[str, str], variable: str, message: str) -> None:
    with pytest.raises(ContextError) as raised:
        context(env)
    error = raised.value
    assert isinstance(error, UsageError)
    assert isinstance(error, LauncherError)
    assert error.exit_code == 2
    assert error.variable == variable
    assert error.value == env.get(variable)
    assert message in str(error)
    assert variable in str(error)


# local rank, CUDA_VISIBLE_DEVICES (None: unset), physical GPUs, device
DEVICES: list[tuple[int, str | None, int, str]] = [
    (0, None, 1, "cuda:0"),
    (3, None, 8, "cuda:3"),
    (1, "4,5", 8, "cuda:1"),  # local rank i uses the i-th listed GPU, which CUDA calls cuda:i
    (2, "4,5", 8, "cpu"),  # beyond the listed GPUs
    (8, None, 8, "cpu"),  # more ranks than GPUs: the rest have none
    (0, "", 8, "cpu"),
    (0, "-1", 8, "cpu"),
    (1, "0,-1,1", 8, "cpu"),  # CUDA stops at the first invalid entry
    (0, "0,-1,1", 8, "cuda:0"),
    (0, "9", 8, "cpu"),  # no such GPU
    (1, "GPU-8f6c1d0e,GPU-1a2b3c4d", 2, "cuda:1"),
    (0, "MIG-5c3d1e8f", 1, "cuda:0"),
    (0, "0", 0, "cpu"),  # the driver lists no GPU
]


@pytest.mark.parametrize(("local_rank", "visible", "physical", "device"), DEVICES)
def test_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_rank: int, visible: str | None, physical: int, device: str
) -> None:
    fake_gpus(monkeypatch, tmp_path, physical)
    env = {"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": "16"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    assert context(env).device == device


@pytest.mark.usefixtures("no_gpus")
def test_no_nvidia_driver_means_cpu_whatever_cuda_visible_devices_says() -> None:
    assert context({"CUDA_VISIBLE_DEVICES": "0,1"}).device == "cpu"


def test_an_imported_cpu_only_torch_means_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None:
        pytest.skip("this torch is built with GPU support")
    fake_driver(monkeypatch, tmp_path, 4)
    assert gpus_module._torch_gpu_count() == 0
    assert context({}).device == "cpu"


def test_torch_not_imported_is_not_asked_nor_imported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    fake_driver(monkeypatch, tmp_path, 2)
    assert gpus_module._torch_gpu_count() is None
    assert context({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}).device == "cuda:1"
    assert "torch" not in sys.modules


@pytest.mark.usefixtures("no_gpus")
def test_run_context_is_frozen_and_is_main_follows_rank() -> None:
    got = context({"RANK": "1", "WORLD_SIZE": "2"})
    assert got.is_main is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.rank = 0  # type: ignore[misc]
    assert dataclasses.replace(got, rank=0).is_main is True
    assert context({}).is_main is True


def test_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch, no_gpus: None) -> None:
    for name in READ:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LAUNCHER_JOB", "from-os-environ")
    got = context()
    assert (got.rank, got.world_size, got.launcher_job) == (1, 3, "from-os-environ")


def test_job_variable_is_the_marker_the_node_sets() -> None:
    from launcher.protocol.base import JOB_MARKER

    assert ctx.JOB_VARIABLE == JOB_MARKER == "LAUNCHER_JOB"


def test_attempt_is_read_from_the_variable_the_launch_sets() -> None:
    from launcher.protocol.base import ATTEMPT_VARIABLE

    assert ctx.ATTEMPT_VARIABLE == ATTEMPT_VARIABLE == "LAUNCHER_ATTEMPT"
    assert context({ATTEMPT_VARIABLE: "7"}).attempt == 7


# --- real processes ---------------------------------------------------------------------

PRINT_CONTEXT = """\
import dataclasses, json, sys
{preamble}
from launcher.run_context import context
# One write per line: two ranks share the pipe, and print() writes the text and its newline apart.
sys.stdout.write("CONTEXT " + json.dumps({{**dataclasses.asdict(context()), "torch_imported": "torch" in sys.modules}}) + "\\n")
sys.stdout.flush()
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything context() reads, so the child sees only what its starter sets."""
    env = {k: v for k, v in os.environ.items() if k not in READ and not k.startswith(("SLURM", "TORCHELASTIC"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def contexts(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("CONTEXT ")]


def expected_device(local_rank: int) -> str:
    """What the imported torch can use: cuda:<local rank> only with a GPU build and enough GPUs."""
    import torch

    cuda = torch.version.cuda is not None and torch.cuda.device_count() > local_rank
    return f"cuda:{local_rank}" if cuda else "cpu"


def test_torchrun_two_ranks(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "print_context.py"
    script.write_text(PRINT_CONTEXT.format(preamble="import torch"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            script,
        ],
        env=clean_env(LAUNCHER_JOB="ctx-test-job", LAUNCHER_ATTEMPT="2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    by_rank = {c["rank"]: c for c in contexts(run.stdout)}
    assert sorted(by_rank) == [0, 1], run.stdout
    for rank, got in by_rank.items():
        assert got == {
            "rank": rank,
            "local_rank": rank,
            "world_size": 2,
            "node_rank": 0,
            "nnodes": 1,
            "host": socket.gethostname(),
            "device": expected_device(rank),
            "launcher_job": "ctx-test-job",
            "source": "torchrun",
            "attempt": 2,  # torchrun passes it on to its workers
            "is_main": rank == 0,
            "torch_imported": True,
        }


def test_plain_python_is_rank_0_of_1_on_cpu_and_imports_no_torch() -> None:
    code = PRINT_CONTEXT.format(preamble="")
    # CUDA_VISIBLE_DEVICES="" hides any GPU this machine has, as CUDA would.
    run = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert contexts(run.stdout) == [
        {
            "rank": 0,
            "local_rank": 0,
            "world_size": 1,
            "node_rank": 0,
            "nnodes": 1,
            "host": socket.gethostname(),
            "device": "cpu",
            "launcher_job": None,
            "source": "single",
            "attempt": 1,
            "is_main": True,
            "torch_imported": False,
        }
    ]


def test_importing_context_imports_only_the_standard_library() -> None:
    code = textwrap.dedent(
        """
        import sys
        before = set(sys.modules)
        import launcher.run_context
        new = {name.partition(".")[0] for name in set(sys.modules) - before}
        print(sorted(new - set(sys.stdlib_module_names) - {"launcher"}))
        """
    )
    run = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
