"""GPUs as they really are, played by a stand-in nvidia-smi (``nvidia_smi_outputs.py``) to
the real node agent (the middle layer, ``local_node.py``): a scheduler's
CUDA_VISIBLE_DEVICES, MIG, a container's pids, exit 14 and 15, a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_node import LocalNode
from nvidia_smi_outputs import (
    APPS,
    EIGHT_A100,
    FELL_OFF_THE_BUS,
    H100_MIG_DEVICES,
    H100_MIG_LIST,
    H100_MIG_QUERY,
    INFOROM_WARNING,
    KILL_APPS,
    MIXED_MIG_LIST,
    MIXED_MIG_QUERY,
    NOT_PERMITTED_MEMORY,
    QUERY,
    TWO_H100,
    write_stand_in,
)

from launcher.errors import GpusBusyError, NoGpusError
from launcher.node import gpus, nvidia_smi, processes
from launcher.protocol.messages import Prepare

A100_0 = "GPU-02154b1f-d355-4a0a-ab84-a001670ab3ff"
A100_5 = "GPU-52154b1f-d355-4a0a-ab84-a001670ab3ff"


def stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[str, int]], script: str = ""
) -> None:
    write_stand_in(tmp_path / "bin", answers, script)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")


# --- a scheduler's CUDA_VISIBLE_DEVICES on the node -----------------------------------------------


@pytest.mark.parametrize("allocation", ["4,5", f"{A100_0[:12]},{A100_5}"], ids=["indices", "uuids"])
def test_the_nodes_allocation_is_what_the_ranks_get(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allocation: str
) -> None:
    """Slurm gave this node 2 of 8 A100s: 2 processes, the busy check looks at those two
    only (GPU 3 is another tenant's), and --include counts within the allocation."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        stand_in(
            tmp_path,
            monkeypatch,
            {QUERY: (EIGHT_A100, 0), APPS: (f"{stranger.pid}, GPU-32154b1f-d355-4a0a-ab84-a001670ab3ff, 9000\n", 0)},
        )
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", allocation)
        answer = node.call(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[]))
        assert (answer.gpus, answer.cuda_visible) == (2, allocation)
        picked = node.call(Prepare(job="j", cwd="/", check_gpus=[1], pick_gpus=[1]))
        assert picked.cuda_visible == allocation.split(",")[1]
        with pytest.raises(NoGpusError, match="names GPU 2, but this host offers 2"):
            node.call(Prepare(job="j", cwd="/", pick_gpus=[2]))
    finally:
        stranger.kill()
        stranger.wait()


def test_without_an_allocation_every_gpu_counts(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path, monkeypatch, {QUERY: (EIGHT_A100, 0), APPS: ("", 0)})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    answer = node.call(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[]))
    assert (answer.gpus, answer.cuda_visible) == (8, None)
    assert node.call(Prepare(job="j", cwd="/", pick_gpus=[0, 6])).cuda_visible == "0,6"


# --- MIG -------------------------------------------------------------------------------------------


def test_mig_makes_one_process_with_a_note_and_refuses_include(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path, monkeypatch, {QUERY: (H100_MIG_QUERY, 0), "-L": (H100_MIG_LIST, 0), APPS: ("", 0)})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    answer = node.call(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[]))
    assert answer.gpus == 1
    assert any("MIG is on" in note for note in answer.gpu_notes)
    with pytest.raises(NoGpusError, match=f"GPU 0, which is MIG device {H100_MIG_DEVICES[0]}"):
        node.call(Prepare(job="j", cwd="/", pick_gpus=[0]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", H100_MIG_DEVICES[1])  # the scheduler's slice
    assert node.call(Prepare(job="j", cwd="/", count_gpus=True)).cuda_visible == H100_MIG_DEVICES[1]
    # Named by UUID on the node, a MIG device may be picked: it is no guess which slice is meant.
    assert node.call(Prepare(job="j", cwd="/", pick_gpus=[0])).cuda_visible == H100_MIG_DEVICES[1]


def test_a_node_with_mig_on_one_gpu_of_four(node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """telegraf#5812's node: MIG on GPU 0 only. By default one process (CUDA shows a process
    one MIG device); a scheduler's allocation of the plain GPUs 1,2 gives two, and
    --include counts among those."""
    stand_in(tmp_path, monkeypatch, {QUERY: (MIXED_MIG_QUERY, 0), "-L": (MIXED_MIG_LIST, 0), APPS: ("", 0)})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert node.call(Prepare(job="j", cwd="/", count_gpus=True)).gpus == 1
    assert node.call(Prepare(job="j", cwd="/", pick_gpus=[4, 5])).cuda_visible == "1,2"  # after GPU 0's 4 slices
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    answer = node.call(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[]))
    assert (answer.gpus, answer.cuda_visible, answer.gpu_notes) == (2, "1,2", [])


# --- nvidia-smi failing, or warning -----------------------------------------------------------------


def test_exit_14_is_a_valid_answer_with_a_warning(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in(tmp_path, monkeypatch, {QUERY: (INFOROM_WARNING + TWO_H100, 14), APPS: (INFOROM_WARNING, 14)})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    answer = node.call(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[]))
    assert answer.gpus == 2
    assert any("infoROM is corrupted at gpu 0000:04:00.0" in note for note in answer.gpu_notes)


@pytest.mark.parametrize(
    ("answers", "script", "said"),
    [
        ({QUERY: (FELL_OFF_THE_BUS, 15)}, "", "Unable to determine the device handle for GPU0000:3B:00.0"),
        ({}, "sleep 300", "did not answer within"),
    ],
    ids=["exit-15", "hangs"],
)
def test_gpus_that_cannot_be_read_are_not_no_gpus(
    node: LocalNode,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answers: dict[str, tuple[str, int]],
    script: str,
    said: str,
) -> None:
    """Not "1 process, no GPU" quietly: the launch is refused, saying what nvidia-smi said."""
    stand_in(tmp_path, monkeypatch, answers, script)
    if script:  # the agent is another process: its timeout is the real one, so the check is direct
        inventory = gpus.list_gpus(timeout=0.5)
        assert inventory.gpus == () and inventory.error is not None and said in inventory.error
        return
    with pytest.raises(NoGpusError, match=f"could not read the GPUs: nvidia-smi failed: {said}.*exit status 15"):
        node.call(Prepare(job="j", cwd="/", count_gpus=True))


@pytest.mark.parametrize(
    ("stdout", "status", "rows", "warnings", "error"),
    [
        (INFOROM_WARNING + TWO_H100, 14, 2, 2, None),
        (INFOROM_WARNING + TWO_H100, 0, 2, 1, None),
        (
            INFOROM_WARNING + FELL_OFF_THE_BUS,
            15,
            0,
            1,
            f"nvidia-smi failed: {FELL_OFF_THE_BUS.strip()} (exit status 15)",
        ),
        ("", 15, 0, 0, "nvidia-smi failed: a GPU has fallen off the bus (exit status 15)"),
    ],
    ids=["exit-14", "warning-exit-0", "exit-15-after-a-warning", "exit-15-silent"],
)
def test_the_runners_reading_of_exit_statuses(
    stdout: str, status: int, rows: int, warnings: int, error: str | None
) -> None:
    """``man nvidia-smi`` (RETURN VALUE): 14 leaves the output valid, 15 does not."""
    output = nvidia_smi.read_output(stdout, "", status)
    assert (len(output.rows), len(output.warnings), output.error) == (rows, warnings, error)


def test_not_permitted_fields_are_unknown_not_unreadable() -> None:
    (gpu,) = nvidia_smi.parse_gpu_query(NOT_PERMITTED_MEMORY)
    assert (gpu.memory_total_mib, gpu.memory_used_mib, gpu.memory_free_mib, gpu.mig_enabled) == (
        23028,
        None,
        None,
        False,
    )


def test_a_failing_busy_check_is_not_dropped(node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stand_in(tmp_path, monkeypatch, {QUERY: (TWO_H100, 0), APPS: ("", 6)})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(GpusBusyError, match="cannot tell whether the GPUs are free: nvidia-smi failed"):
        node.call(Prepare(job="j", cwd="/", check_gpus=[]))


def test_without_nvidia_smi_the_gpus_of_proc_are_used_unchecked(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A driver but no nvidia-smi (a container without the utilities): /proc counts the GPUs,
    and the launch says the busy check could not run instead of refusing or keeping quiet."""
    from launcher.node.preflight import gpu_checks

    for n in range(2):
        (tmp_path / "gpus" / f"0000:{n:02x}:00.0").mkdir(parents=True)
    monkeypatch.setattr(gpus, "PROC_DRIVER", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    answer = gpu_checks(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[]))
    assert (answer.count, answer.notes) == (2, ("no nvidia-smi here: whether its GPUs are free is not checked",))


# --- a container: nvidia-smi reports the host's pids (nvidia-docker#1483) ---------------------------


def a_pid_not_here() -> int:
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def test_a_holder_from_another_pid_namespace_is_a_note_unless_memory_says_taken(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host_pid = a_pid_not_here()
    mostly_free = TWO_H100  # 81008 of 81559 MiB free
    stand_in(
        tmp_path,
        monkeypatch,
        {QUERY: (mostly_free, 0), APPS: (f"{host_pid}, GPU-00a1c2e4-5b6d-4f80-9a1b-2c3d4e5f6a7b, 512\n", 0)},
    )
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    answer = node.call(Prepare(job="j", cwd="/", check_gpus=[]))
    assert any(f"pid(s) {host_pid}" in note and "cannot tell whose" in note for note in answer.gpu_notes)

    taken = TWO_H100.replace("81559, 0, 81008", "81559, 80000, 1559", 1)
    stand_in(
        tmp_path,
        monkeypatch,
        {QUERY: (taken, 0), APPS: (f"{host_pid}, GPU-00a1c2e4-5b6d-4f80-9a1b-2c3d4e5f6a7b, 80000\n", 0)},
    )
    with pytest.raises(GpusBusyError, match=f"GPU 0 is held by pid {host_pid}, of another pid namespace"):
        node.call(Prepare(job="j", cwd="/", check_gpus=[]))


def test_the_kill_check_says_when_it_cannot_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host_pid = a_pid_not_here()
    stand_in(tmp_path, monkeypatch, {KILL_APPS: (f"{host_pid}\n", 0)})
    assert processes.gpu_holders({os.getpid()}) == (
        [],
        f"not verifiable in a container: nvidia-smi lists pid(s) {host_pid}, not processes here",
    )
    stand_in(tmp_path, monkeypatch, {KILL_APPS: (f"{os.getpid()}\n", 0)})
    assert processes.gpu_holders({os.getpid()}) == ([os.getpid()], None)
    stand_in(tmp_path, monkeypatch, {KILL_APPS: (FELL_OFF_THE_BUS, 15)})
    held, why = processes.gpu_holders({os.getpid()})
    assert held == [] and why is not None and "exit status 15" in why


def test_a_kill_in_a_container_says_the_gpu_is_not_verified(
    node: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real agent kills a real job; nvidia-smi (standing for a container's view) lists a
    host pid: the kill is verified in the process table, and says the GPU is not."""
    from launcher.job.kill import _host_kill
    from launcher.protocol.messages import Kill, Start

    host_pid = a_pid_not_here()
    stand_in(tmp_path, monkeypatch, {KILL_APPS: (f"{host_pid}\n", 0)})
    node.call(Start(job="held", argv=["sleep", "60"], env={}, cwd=str(tmp_path)))
    report = node.call(Kill(job="held", grace=1))
    assert report.found >= 1 and report.left == [] and report.gpu_holders == []
    assert report.gpu_unverified is not None and "not verifiable in a container" in report.gpu_unverified
    verdict = _host_kill("h0", report)
    assert verdict.verified and verdict.message.endswith(f"none left; GPU memory {report.gpu_unverified}")


# --- doctor's GPU report ---------------------------------------------------------------------------


def test_doctor_reports_the_gpus_a_launch_would_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from launcher.node.doctor import gpu_report

    stand_in(tmp_path, monkeypatch, {QUERY: (EIGHT_A100, 0), APPS: ("", 0)})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    report = gpu_report()
    assert (report.count, len(report.free_mib)) == (2, 2)
    assert "CUDA_VISIBLE_DEVICES=4,5 here: 2 device(s)" in report.note

    stand_in(tmp_path, monkeypatch, {QUERY: (FELL_OFF_THE_BUS, 15)})
    report = gpu_report()
    assert report.count == 0 and report.note.startswith("could not read the GPUs: nvidia-smi failed: Unable to")


# --- tests/gpu/check_gpus.py on a machine without a usable GPU: SKIP, never OK, never a traceback ---


@pytest.mark.parametrize(
    ("answers", "status", "last"),
    [
        (None, 0, "SKIP: nothing could be checked on this machine"),
        ({QUERY: (TWO_H100, 0), APPS: ("", 0)}, 0, "OK: 1 check(s) passed, 7 skipped"),
        ({QUERY: (FELL_OFF_THE_BUS, 15), APPS: (FELL_OFF_THE_BUS, 15)}, 1, "FAIL: 1 check(s) failed"),
    ],
    ids=["no-driver", "gpus-and-a-cpu-torch", "exit-15"],
)
def test_check_gpus_says_what_it_could_not_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[str, tuple[str, int]] | None, status: int, last: str
) -> None:
    import torch

    if torch.version.cuda is not None or gpus.PROC_DRIVER.exists():
        pytest.skip("this machine has CUDA: check_gpus.py would launch on it")
    if answers is not None:
        stand_in(tmp_path, monkeypatch, answers)
    script = Path(__file__).resolve().parent / "gpu" / "check_gpus.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == status and done.stdout.splitlines()[-1].startswith(last), done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line.startswith(("OK ", "SKIP ", "FAIL "))]
    assert [line.split()[0] for line in checks if "kill frees the GPU" in line] == ["SKIP"]


# --- a rank's own count (launcher.context(), without torch) -----------------------------------------


@pytest.mark.parametrize(
    ("listed", "count"),
    [("4,5", 2), (None, 8), (",".join(H100_MIG_DEVICES), 1), (H100_MIG_DEVICES[0], 1), ("0,-1,2", 1), ("", 0)],
)
def test_a_ranks_gpu_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed: str | None, count: int) -> None:
    """Read as CUDA reads CUDA_VISIBLE_DEVICES; several MIG devices are one: a CUDA process
    enumerates a single MIG device (NVIDIA's MIG user guide, "CUDA Device Enumeration")."""
    from launcher import visible_gpus

    for n in range(8):
        (tmp_path / f"0000:{n:02x}:00.0").mkdir()
    monkeypatch.setattr(visible_gpus, "_NVIDIA_GPUS", tmp_path)
    monkeypatch.setattr(visible_gpus, "_torch_gpu_count", lambda: None)
    env = {} if listed is None else {"CUDA_VISIBLE_DEVICES": listed}
    assert visible_gpus.visible_gpu_count(env) == count


def test_include_by_uuid_says_how_to_pick_a_mig_device() -> None:
    from launcher.errors import HostsFileError
    from launcher.hosts.files import Host
    from launcher.hosts.selection import select_hosts

    with pytest.raises(HostsFileError) as refused:
        select_hosts((Host("node1"),), f"node1:{H100_MIG_DEVICES[0]}", None)
    message = str(refused.value)
    assert "names a GPU by UUID, but GPUs are picked by index (node1:0,1)" in message
    assert message.endswith(f"set CUDA_VISIBLE_DEVICES={H100_MIG_DEVICES[0]} in node1's own environment")
