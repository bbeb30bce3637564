"""GPU discovery (``launcher/gpus.py``) on nvidia-smi's real output shapes.

The parsers run on literal text as nvidia-smi prints it. ``list_gpus()`` and
``gpu_processes()`` run end to end against fake ``nvidia-smi`` executables (shell
scripts first on PATH) that print that text, exit with nvidia-smi's codes, or hang; each
fake logs its arguments, so the tests also pin how many calls an operation costs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from launcher.node import gpus, nvidia_smi
from launcher.node.gpus import BusyGpu, GpuInventory
from launcher.node.nvidia_smi import Gpu, GpuProcess, MigDevice

# --- nvidia-smi's output, as it prints it ------------------------------------------------------

QUERY_GPU = "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,mig.mode.current"
QUERY_GPU_PRE_R450 = "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free"
QUERY_APPS = "--query-compute-apps=pid,gpu_uuid,used_memory"
CSV = "--format=csv,noheader,nounits"

A100_UUIDS = [
    "GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff",
    "GPU-918d7e23-6d2f-4460-a2fa-93f4c059753a",
    "GPU-892bc7be-ecfa-4bc1-bf77-cae2a15cf3cb",
    "GPU-dc509c9f-39ba-4f88-bc22-de4620982bea",
    "GPU-99ab5641-3102-4563-bd8d-e8a73a6d029a",
    "GPU-fa438566-74cc-4db7-a780-54bf6fd7522d",
    "GPU-bdd3c9db-7614-4f61-a776-571c30ff1ec5",
    "GPU-498d912b-f7a5-4077-ba1c-31640188f9ff",
]

# 8x A100 80GB, GPU 3 busy; A100s can do MIG, and it is off.
EIGHT_A100 = """\
0, GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
1, GPU-918d7e23-6d2f-4460-a2fa-93f4c059753a, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
2, GPU-892bc7be-ecfa-4bc1-bf77-cae2a15cf3cb, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
3, GPU-dc509c9f-39ba-4f88-bc22-de4620982bea, NVIDIA A100-SXM4-80GB, 81920, 40557, 40498, Disabled
4, GPU-99ab5641-3102-4563-bd8d-e8a73a6d029a, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
5, GPU-fa438566-74cc-4db7-a780-54bf6fd7522d, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
6, GPU-bdd3c9db-7614-4f61-a776-571c30ff1ec5, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
7, GPU-498d912b-f7a5-4077-ba1c-31640188f9ff, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
"""

# Two models in one box; GeForce and workstation cards have no MIG ("[N/A]"), and one does
# not report its memory use.
MIXED = """\
0, GPU-7a78ba5b-f2b5-4dff-9695-689af5e14ffd, NVIDIA GeForce RTX 3090, 24576, 1089, 23207, [N/A]
1, GPU-9b73c595-3cb1-4b13-b79a-6ce974e045ba, NVIDIA RTX A6000, 49140, [N/A], [N/A], [N/A]
"""

# GPU 0 in MIG mode with three MIG devices, GPU 1 not.
MIG_QUERY = """\
0, GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5, NVIDIA A100-SXM4-40GB, 40960, 37, 40326, Enabled
1, GPU-5d285865-acd2-4dba-a1fa-7d370344bf48, NVIDIA A100-SXM4-40GB, 40960, 0, 40326, Disabled
"""
MIG_LIST = """\
GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5)
  MIG 3g.20gb     Device  0: (UUID: MIG-8f07ea24-c3aa-4135-8264-ef0b69e7b739)
  MIG 2g.10gb     Device  1: (UUID: MIG-52cd7970-f59a-42c2-af90-015af6300d30)
  MIG 1g.5gb      Device  2: (UUID: MIG-32b69a8d-a789-4ae7-bb50-dcefe7fcb26f)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5d285865-acd2-4dba-a1fa-7d370344bf48)
"""
# What R450/R460 drivers printed for MIG devices.
MIG_LIST_R450 = """\
GPU 0: A100-SXM4-40GB (UUID: GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5)
  MIG 1g.5gb Device 0: (UUID: MIG-GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5/7/0)
  MIG 1g.5gb Device 1: (UUID: MIG-GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5/8/0)
"""

NO_DEVICES = "No devices were found\n"
VERSION_MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 535.183\n"
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n\n"
)
PRE_R450_FIELD = 'Field "mig.mode.current" is not a valid field to query.\n\n'

APPS = """\
48211, GPU-dc509c9f-39ba-4f88-bc22-de4620982bea, 40551
48212, GPU-dc509c9f-39ba-4f88-bc22-de4620982bea, 2
51007, GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff, [N/A]
"""

PROC_INFORMATION = """\
Model: \t\t NVIDIA A100-SXM4-80GB
IRQ:   \t\t 0
GPU UUID: \t GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff
Video BIOS: \t 92.00.45.00.04
Bus Type: \t PCIe
DMA Size: \t 47 bits
DMA Mask: \t 0x7fffffffffff
Bus Location: \t 0000:07:00.0
Device Minor: \t 0
GPU Excluded:\t No
"""


# --- the parsers on text -----------------------------------------------------------------------


def test_eight_a100() -> None:
    parsed = nvidia_smi.parse_gpu_query(EIGHT_A100)
    assert [g.index for g in parsed] == list(range(8))
    assert [g.uuid for g in parsed] == A100_UUIDS
    assert {g.name for g in parsed} == {"NVIDIA A100-SXM4-80GB"}
    assert {g.memory_total_mib for g in parsed} == {81920}
    assert parsed[3] == Gpu(3, A100_UUIDS[3], "NVIDIA A100-SXM4-80GB", 81920, 40557, 40498, False, ())
    assert not any(g.mig_enabled for g in parsed)
    assert gpus.default_nproc(GpuInventory(parsed, "nvidia-smi")) == 8


def test_mixed_models_and_not_available_fields() -> None:
    rtx, a6000 = nvidia_smi.parse_gpu_query(MIXED)
    assert rtx == Gpu(0, "GPU-7a78ba5b-f2b5-4dff-9695-689af5e14ffd", "NVIDIA GeForce RTX 3090", 24576, 1089, 23207)
    assert a6000 == Gpu(1, "GPU-9b73c595-3cb1-4b13-b79a-6ce974e045ba", "NVIDIA RTX A6000", 49140, None, None)


def test_query_without_the_mig_field() -> None:
    six_fields = "".join(line.rsplit(",", 1)[0] + "\n" for line in MIG_QUERY.splitlines())
    parsed = nvidia_smi.parse_gpu_query(six_fields, with_mig=False)
    assert [(g.index, g.memory_free_mib, g.mig_enabled) for g in parsed] == [(0, 40326, False), (1, 40326, False)]


def test_a_comma_in_a_name_stays_in_the_name() -> None:
    (gpu,) = nvidia_smi.parse_gpu_query(
        "0, GPU-2e1b31f8-d7b4-426c-9d3a-fdc1d446297a, Tesla V100, PCIe, 16160, 0, 15788, [N/A]"
    )
    assert (gpu.name, gpu.memory_total_mib, gpu.memory_free_mib) == ("Tesla V100, PCIe", 16160, 15788)


@pytest.mark.parametrize(
    "text",
    [
        "Segmentation fault\n",
        "0, GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff, NVIDIA A100-SXM4-80GB\n",  # too few fields
        "zero, GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled\n",
        "0, GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff, NVIDIA A100-SXM4-80GB, 80 GiB, 4, 81051, Disabled\n",
        "0, [N/A], NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled\n",  # no uuid: not a usable GPU line
        "0, GPU-62154b1f-d355-4a0a-ab84-a001670ab3ff, , 81920, 4, 81051, Disabled\n",  # no name
        EIGHT_A100 + "Unable to determine the device handle for GPU0000:C7:00.0: Unknown Error\n",
    ],
)
def test_query_output_that_is_not_gpus(text: str) -> None:
    with pytest.raises(nvidia_smi.UnreadableOutput):
        nvidia_smi.parse_gpu_query(text)


def test_gpu_list_with_mig_devices() -> None:
    assert nvidia_smi.parse_gpu_list(MIG_LIST) == {
        0: (
            MigDevice(0, "3g.20gb", "MIG-8f07ea24-c3aa-4135-8264-ef0b69e7b739"),
            MigDevice(1, "2g.10gb", "MIG-52cd7970-f59a-42c2-af90-015af6300d30"),
            MigDevice(2, "1g.5gb", "MIG-32b69a8d-a789-4ae7-bb50-dcefe7fcb26f"),
        ),
        1: (),
    }


def test_gpu_list_of_r450_drivers() -> None:
    assert nvidia_smi.parse_gpu_list(MIG_LIST_R450) == {
        0: (
            MigDevice(0, "1g.5gb", "MIG-GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5/7/0"),
            MigDevice(1, "1g.5gb", "MIG-GPU-6cc761f8-e19f-49df-9fb5-866cc81875f5/8/0"),
        )
    }


@pytest.mark.parametrize(
    "text",
    [
        "  MIG 1g.5gb      Device  0: (UUID: MIG-32b69a8d-a789-4ae7-bb50-dcefe7fcb26f)\n",  # before any GPU
        MIG_LIST + "  MIG 1g.5gb      Device  3 (UUID: MIG-32b69a8d-a789-4ae7-bb50-dcefe7fcb26f)\n",  # no colon
        NO_DRIVER,
    ],
)
def test_gpu_list_that_is_not_one(text: str) -> None:
    with pytest.raises(nvidia_smi.UnreadableOutput):
        nvidia_smi.parse_gpu_list(text)


def test_compute_apps() -> None:
    index = {uuid: i for i, uuid in enumerate(A100_UUIDS)}
    assert nvidia_smi.parse_compute_apps(APPS, index) == (
        GpuProcess(48211, A100_UUIDS[3], 3, 40551),
        GpuProcess(48212, A100_UUIDS[3], 3, 2),
        GpuProcess(51007, A100_UUIDS[0], 0, None),
    )
    assert nvidia_smi.parse_compute_apps(APPS)[0] == GpuProcess(48211, A100_UUIDS[3], None, 40551)


@pytest.mark.parametrize("text", ["", "\n", "No running processes found\n"])
def test_no_compute_apps(text: str) -> None:
    assert nvidia_smi.parse_compute_apps(text) == ()


@pytest.mark.parametrize("text", ["48211, GPU-dc509c9f-39ba-4f88-bc22-de4620982bea\n", "[N/A], GPU-x, 12\n", NO_DRIVER])
def test_compute_apps_that_are_not_processes(text: str) -> None:
    with pytest.raises(nvidia_smi.UnreadableOutput):
        nvidia_smi.parse_compute_apps(text)


def test_proc_information() -> None:
    info = nvidia_smi.parse_proc_information(PROC_INFORMATION)
    assert info["Model"] == "NVIDIA A100-SXM4-80GB"
    assert info["GPU UUID"] == A100_UUIDS[0]
    assert info["Bus Location"] == "0000:07:00.0"
    assert info["GPU Excluded"] == "No"


# --- default_nproc and busy_gpus ---------------------------------------------------------------


def a_gpu(index: int, mig: int | None = None) -> Gpu:
    devices = tuple(MigDevice(d, "1g.10gb", f"MIG-{index}-{d}") for d in range(mig or 0))
    return Gpu(index, f"GPU-{index}", "NVIDIA A100-SXM4-80GB", mig_enabled=mig is not None, mig_devices=devices)


@pytest.mark.parametrize(
    ("inventory", "expected"),
    [
        ((), 1),
        ((a_gpu(0),), 1),
        ((a_gpu(0), a_gpu(1)), 2),
        # A CUDA process can use one MIG device only (NVIDIA's MIG user guide, "CUDA Device
        # Enumeration"; pytorch#130181): a second rank would fail "invalid device ordinal".
        ((a_gpu(0, mig=3),), 1),
        ((a_gpu(0, mig=3), a_gpu(1)), 1),
        ((a_gpu(0, mig=7), a_gpu(1, mig=2)), 1),
        ((a_gpu(0, mig=0), a_gpu(1)), 1),  # MIG on without devices: CUDA cannot use that GPU
        ((a_gpu(0, mig=0),), 1),
    ],
)
def test_default_nproc(inventory: tuple[Gpu, ...], expected: int) -> None:
    assert gpus.default_nproc(GpuInventory(inventory, "test")) == expected


def test_busy_gpus_are_those_of_other_processes() -> None:
    processes = [
        GpuProcess(100, "GPU-3", 3, 40000),  # a launcher job's rank
        GpuProcess(200, "GPU-3", 3, 500),  # someone's notebook on the same GPU
        GpuProcess(300, "GPU-5", 5, 1000),
        GpuProcess(300, "GPU-1", 1, 24),  # one process on two GPUs
        GpuProcess(301, "GPU-1", 1, None),
        GpuProcess(400, "GPU-7", 7, 7),  # a launcher job's rank
        GpuProcess(500, "MIG-x", None, 5),  # unmapped: sorted last
    ]
    asked: list[int] = []

    def is_launcher_job(pid: int) -> bool:
        asked.append(pid)
        return pid in (100, 400)

    assert gpus.busy_gpus(processes, is_launcher_job) == (
        BusyGpu("GPU-1", 1, (300, 301), None),
        BusyGpu("GPU-3", 3, (200,), 500),
        BusyGpu("GPU-5", 5, (300,), 1000),
        BusyGpu("MIG-x", None, (500,), 5),
    )
    assert sorted(asked) == [100, 200, 300, 301, 400, 500]  # once per pid


def test_no_gpu_is_busy_with_only_launcher_jobs() -> None:
    processes = nvidia_smi.parse_compute_apps(APPS)
    assert gpus.busy_gpus(processes, lambda pid: True) == ()
    assert [b.uuid for b in gpus.busy_gpus(processes, lambda pid: False)] == [A100_UUIDS[0], A100_UUIDS[3]]


# --- list_gpus and gpu_processes against fake nvidia-smi executables ---------------------------


@dataclass
class FakeSmi:
    """A fake ``nvidia-smi`` first on PATH; ``calls()`` are the argument lists it got."""

    directory: Path

    def calls(self) -> list[str]:
        log = self.directory / "calls"
        return log.read_text().splitlines() if log.exists() else []


def fake_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[str, int]], script: str = ""
) -> FakeSmi:
    """``answers`` maps a shell ``case`` pattern of the arguments to (stdout, exit status);
    ``script``, if given, runs instead of those answers."""
    directory = tmp_path / "bin"
    directory.mkdir()
    lines = ["#!/bin/sh", f'printf "%s\\n" "$*" >> "{directory}/calls"']
    if script:
        lines.append(script)
    else:
        lines.append('case "$*" in')
        for number, (pattern, (stdout, status)) in enumerate(answers.items()):
            (directory / f"answer{number}").write_text(stdout)
            lines.append(f'  {pattern}) cat "{directory}/answer{number}"; exit {status} ;;')
        lines += ['  *) echo "fake nvidia-smi: unexpected $*" >&2; exit 99 ;;', "esac"]
    executable = directory / "nvidia-smi"
    executable.write_text("\n".join(lines) + "\n")
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return FakeSmi(directory)


def test_eight_gpus_in_one_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (EIGHT_A100, 0)})
    inventory = gpus.list_gpus()
    assert inventory == GpuInventory(nvidia_smi.parse_gpu_query(EIGHT_A100), "nvidia-smi")
    assert len(inventory.gpus) == 8
    assert fake.calls() == [f"{QUERY_GPU} {CSV}"]  # no -L without MIG


def test_mig_devices_cost_one_call_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (MIG_QUERY, 0), "-L": (MIG_LIST, 0)})
    inventory = gpus.list_gpus()
    assert inventory.source == "nvidia-smi"
    mig_gpu, plain_gpu = inventory.gpus
    assert mig_gpu.mig_enabled
    assert [(m.device, m.profile) for m in mig_gpu.mig_devices] == [(0, "3g.20gb"), (1, "2g.10gb"), (2, "1g.5gb")]
    assert mig_gpu.memory_total_mib == 40960
    assert not plain_gpu.mig_enabled and plain_gpu.mig_devices == ()
    assert gpus.default_nproc(inventory) == 1  # MIG: one process (see test_default_nproc)
    assert fake.calls() == [f"{QUERY_GPU} {CSV}", "-L"]


def test_mig_devices_unknown_when_the_list_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (MIG_QUERY, 0), "-L": ("Unknown Error\n", 255)})
    inventory = gpus.list_gpus()
    assert inventory.gpus == nvidia_smi.parse_gpu_query(MIG_QUERY)
    assert (
        inventory.source
        == "nvidia-smi (its MIG devices are unknown: nvidia-smi failed: Unknown Error (exit status 255))"
    )


def test_a_driver_before_r450_is_asked_again_without_the_mig_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    six_fields = "".join(line.rsplit(",", 1)[0] + "\n" for line in EIGHT_A100.splitlines())
    fake = fake_smi(
        tmp_path,
        monkeypatch,
        {"*mig.mode.current*": (PRE_R450_FIELD, 2), "--query-gpu=*": (six_fields, 0)},
    )
    inventory = gpus.list_gpus()
    assert (len(inventory.gpus), inventory.source) == (8, "nvidia-smi")
    assert fake.calls() == [f"{QUERY_GPU} {CSV}", f"{QUERY_GPU_PRE_R450} {CSV}"]


@pytest.mark.parametrize(
    ("stdout", "status", "source"),
    [
        (NO_DEVICES, 6, "nvidia-smi: No devices were found"),
        (
            VERSION_MISMATCH,
            18,
            "nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch (exit status 18)",
        ),
        (NO_DRIVER, 9, f"nvidia-smi failed: {NO_DRIVER.strip()} (exit status 9)"),
        ("", 9, "nvidia-smi failed: NVIDIA driver is not loaded (exit status 9)"),
        ("", 0, "nvidia-smi listed no GPU"),
        (
            "Segmentation fault\n",
            0,
            "nvidia-smi --query-gpu: expected 7 fields, got 'Segmentation fault'",
        ),
    ],
)
def test_no_gpus_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: str, status: int, source: str
) -> None:
    fake = fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (stdout, status)})
    unreadable = not source.endswith(("No devices were found", "listed no GPU"))  # "cannot tell", not "none"
    assert gpus.list_gpus() == GpuInventory((), source, error=source if unreadable else None)
    assert len(fake.calls()) == 1


def test_an_error_on_stderr_is_preferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, {}, script='echo "some table"; echo "Insufficient Permissions" >&2; exit 4')
    assert gpus.list_gpus().source == "nvidia-smi failed: Insufficient Permissions (exit status 4)"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: our container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    "script",
    [
        'echo $$ > "$0.pids"; exec sleep 30',
        # A child that keeps the output pipe open: only killing the process group ends it.
        'echo $$ > "$0.pids"; sleep 30 & echo $! >> "$0.pids"; wait',
    ],
    ids=["hangs", "hangs-with-a-child"],
)
def test_a_hung_nvidia_smi_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    fake = fake_smi(tmp_path, monkeypatch, {}, script=script)
    started = time.monotonic()
    inventory = gpus.list_gpus(timeout=0.5)
    assert time.monotonic() - started < 3
    hung = "nvidia-smi did not answer within 0.5 s"
    assert inventory == GpuInventory((), hung, error=hung)
    pids = [int(pid) for pid in (fake.directory / "nvidia-smi.pids").read_text().split()]
    assert pids
    deadline = time.monotonic() + 2  # the orphaned child is killed, not necessarily reaped yet
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(pid) for pid in pids)


def test_an_nvidia_smi_that_cannot_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "nvidia-smi").write_text("#!/nonexistent/interpreter\n")
    (directory / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(directory))
    assert gpus.list_gpus().source == "nvidia-smi could not start: No such file or directory"
    assert gpus.gpu_processes().error == "nvidia-smi could not start: No such file or directory"


def test_processes_mapped_to_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (EIGHT_A100, 0), "--query-compute-apps=*": (APPS, 0)})
    processes = gpus.gpu_processes(gpus.list_gpus())
    assert processes.error is None
    assert [(p.pid, p.gpu_index, p.used_memory_mib) for p in processes.processes] == [
        (48211, 3, 40551),
        (48212, 3, 2),
        (51007, 0, None),
    ]
    assert fake.calls()[1:] == [f"{QUERY_APPS} {CSV}"]  # one call of its own


def test_processes_on_mig_devices_map_to_their_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apps = "7001, MIG-52cd7970-f59a-42c2-af90-015af6300d30, 9800\n7002, GPU-5d285865-acd2-4dba-a1fa-7d370344bf48, 300\n"
    fake_smi(
        tmp_path,
        monkeypatch,
        {"--query-gpu=*": (MIG_QUERY, 0), "-L": (MIG_LIST, 0), "--query-compute-apps=*": (apps, 0)},
    )
    processes = gpus.gpu_processes(gpus.list_gpus()).processes
    assert [(p.pid, p.gpu_index) for p in processes] == [(7001, 0), (7002, 1)]


@pytest.mark.parametrize(
    ("stdout", "status", "expected"),
    [
        ("", 0, gpus.GpuProcesses(())),
        (
            VERSION_MISMATCH,
            18,
            gpus.GpuProcesses((), f"nvidia-smi failed: {VERSION_MISMATCH.splitlines()[0]} (exit status 18)"),
        ),
        ("12, 13\n", 0, gpus.GpuProcesses((), "nvidia-smi --query-compute-apps: expected 3 fields, got '12, 13'")),
    ],
)
def test_processes_or_why_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stdout: str, status: int, expected: gpus.GpuProcesses
) -> None:
    fake_smi(tmp_path, monkeypatch, {"--query-compute-apps=*": (stdout, status)})
    assert gpus.gpu_processes() == expected


def test_results_are_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (MIG_QUERY, 0), "-L": (MIG_LIST, 0)})
    sent = json.loads(json.dumps(dataclasses.asdict(gpus.list_gpus())))
    assert sent["source"] == "nvidia-smi"
    assert sent["gpus"][0]["mig_devices"][2] == {
        "device": 2,
        "profile": "1g.5gb",
        "uuid": "MIG-32b69a8d-a789-4ae7-bb50-dcefe7fcb26f",
    }
    assert sent["gpus"][1]["memory_free_mib"] == 40326


# --- without nvidia-smi ------------------------------------------------------------------------


def no_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_gpus_from_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_smi(tmp_path, monkeypatch)
    driver = tmp_path / "driver"
    boards = {
        "0000:c7:00.0": PROC_INFORMATION.replace("0000:07:00.0", "0000:c7:00.0").replace(A100_UUIDS[0], A100_UUIDS[1]),
        "0000:07:00.0": PROC_INFORMATION,
        # Before anything has used NVML since boot, the uuid is unknown.
        "0000:4e:00.0": PROC_INFORMATION.replace(A100_UUIDS[0], "GPU-????????-????-????-????-????????????"),
        "0000:4f:00.0": PROC_INFORMATION.replace("GPU Excluded:\t No", "GPU Excluded:\t Yes"),
    }
    for bus, text in boards.items():
        (driver / "gpus" / bus).mkdir(parents=True)
        (driver / "gpus" / bus / "information").write_text(text)
    inventory = gpus.list_gpus(proc_driver=driver)
    assert inventory == GpuInventory(
        (
            Gpu(0, A100_UUIDS[0], "NVIDIA A100-SXM4-80GB"),
            Gpu(1, None, "NVIDIA A100-SXM4-80GB"),
            Gpu(2, A100_UUIDS[1], "NVIDIA A100-SXM4-80GB"),
        ),
        f"{driver} (no nvidia-smi: no memory or MIG details)",
    )
    assert gpus.default_nproc(inventory) == 3


def test_a_driver_without_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_smi(tmp_path, monkeypatch)
    (tmp_path / "driver" / "gpus").mkdir(parents=True)
    assert gpus.list_gpus(proc_driver=tmp_path / "driver") == GpuInventory(
        (), f"no nvidia-smi, and {tmp_path / 'driver'} lists no GPU"
    )


def test_no_nvidia_smi_and_no_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_smi(tmp_path, monkeypatch)
    assert gpus.list_gpus(proc_driver=tmp_path / "absent") == GpuInventory(
        (), f"no nvidia-smi and no {tmp_path / 'absent'}"
    )
    assert gpus.gpu_processes() == gpus.GpuProcesses((), "no nvidia-smi")


def test_this_machine_has_no_gpu() -> None:
    """On the CI machine (no nvidia-smi, no driver): an empty inventory and the reason.
    A machine with GPUs runs ``tests/gpu/check_gpus.py`` instead."""
    if shutil.which("nvidia-smi") is not None or gpus.PROC_DRIVER.exists():
        pytest.skip("this machine has an NVIDIA driver: see tests/gpu/check_gpus.py")
    inventory = gpus.list_gpus()
    assert inventory == GpuInventory((), "no nvidia-smi and no /proc/driver/nvidia")
    assert gpus.default_nproc(inventory) == 1
    assert gpus.gpu_processes() == gpus.GpuProcesses((), "no nvidia-smi")


# --- the launch's busy-GPU check (node/preflight.py) with a fake nvidia-smi ---------------------


def test_a_gpu_held_by_another_launcher_job_is_busy_unless_that_job_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An orphan of a lost job (its marker, another name) keeps GPU 0: a launch is refused
    naming that job; only a --force launch of that same name may take the GPU."""
    from launcher.node.errors import NodeError
    from launcher.node.preflight import gpu_checks
    from launcher.protocol.base import JOB_MARKER
    from launcher.protocol.messages import Prepare

    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, JOB_MARKER: "lost-job"})
    stranger = subprocess.Popen(["sleep", "60"], env={k: v for k, v in os.environ.items() if k != JOB_MARKER})
    try:
        apps = f"{orphan.pid}, {A100_UUIDS[0]}, 1000\n{stranger.pid}, {A100_UUIDS[3]}, 500\n"
        fake_smi(tmp_path, monkeypatch, {"--query-gpu=*": (EIGHT_A100, 0), "--query-compute-apps=*": (apps, 0)})

        with pytest.raises(NodeError) as refused:
            gpu_checks(Prepare(job="new-job", cwd="/", check_gpus=[0, 1]))
        assert refused.value.kind == "gpus_busy"
        assert str(refused.value).startswith(f"GPU 0 is held by launcher job lost-job (pid {orphan.pid})")

        with pytest.raises(
            NodeError, match=f"GPU 0 is held by launcher job lost-job .*; GPU 3 is held by pid {stranger.pid}"
        ):
            gpu_checks(Prepare(job="new-job", cwd="/", check_gpus=[]))
        with pytest.raises(NodeError, match="launcher job lost-job"):  # the same name, not replacing it
            gpu_checks(Prepare(job="lost-job", cwd="/", check_gpus=[0]))

        assert gpu_checks(Prepare(job="lost-job", cwd="/", replace=True, check_gpus=[0])).count is None
        with pytest.raises(NodeError, match=f"GPU 3 is held by pid {stranger.pid} \\(sleep\\), of no launcher job"):
            gpu_checks(Prepare(job="lost-job", cwd="/", replace=True, check_gpus=[]))
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()
