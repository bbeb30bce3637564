"""``launcher doctor``'s findings and table from answers (pure), and its node side on
this machine: versions read without importing torch, and the agent's checkup (middle layer)."""

from __future__ import annotations

import io
import sys
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest
from local_node import LocalNode

from launcher.cli.doctor import doctor_json, gpu_cell, print_doctor
from launcher.doctor.checks import DoctorReport, _Answer, evaluate, human_bytes
from launcher.hosts.files import Host
from launcher.node import doctor as node_doctor
from launcher.protocol.doctor import Checkup, DiskSpace, GpuReport, NodeReport
from launcher.protocol.messages import Probe

GIB = 1 << 30


def report(**changes: object) -> NodeReport:
    base = NodeReport(
        received=1000.0,
        time=1000.0,
        python_version="3.11.7",
        tmux="3.3a",
        torch="2.4.0+cu121",
        cuda="12.1",
        nccl="2.20.5",
        gpus=GpuReport(8, ["NVIDIA H100 80GB HBM3"], [81000] * 8, [], "nvidia-smi"),
        disks=[
            DiskSpace("working directory", "/home/me/project", 300 * GIB),
            DiskSpace("state directory", "/s", 300 * GIB),
        ],
    )
    return replace(base, **changes)  # type: ignore[arg-type]


FIRST = report(
    port=29500,
    candidates=["10.0.0.1", "10.1.0.1"],
    probes=[Probe("10.0.0.1", 29500, True, None, "eth0"), Probe("10.1.0.1", 29500, True, None, "ib0")],
)
HOSTS = tuple(Host(name) for name in ("gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04"))


def reached(interface: str) -> NodeReport:
    return report(probes=[Probe("10.0.0.1", 29500, True, None, interface)])


def blocked() -> NodeReport:
    return report(
        probes=[
            Probe("10.0.0.1", 29500, False, "timed out after 3 s", "eno1"),
            Probe("10.1.0.1", 29500, False, "timed out after 3 s", "ib0"),
        ]
    )


def answers(*reports: NodeReport | None, error: str = "cannot connect: timed out after 10 s") -> list[_Answer]:
    return [_Answer(0.05, 0.0, r) if r is not None else _Answer(error=error) for r in reports]


def render(result: DoctorReport) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        print_doctor(result, width=80)
    return out.getvalue()


def test_a_healthy_cluster_is_ok_and_names_each_hosts_interface() -> None:
    result = evaluate(HOSTS[:3], answers(FIRST, reached("eno1"), reached("enp65s0")))
    assert result.ok and result.rendezvous == "10.0.0.1:29500"
    assert [h.interface for h in result.hosts] == ["eth0", "eno1", "enp65s0"]
    assert [h.level for h in result.hosts] == ["ok"] * 3


def test_the_table_at_80_columns_with_every_kind_of_problem() -> None:
    odd_torch = reached("eno1")
    odd_torch = replace(odd_torch, torch="2.3.1+cu118", cuda="11.8", received=1002.5, time=1002.5)
    busy = replace(
        reached("eno1"),
        gpus=GpuReport(8, ["NVIDIA H100 80GB HBM3"], [500] + [81000] * 7, ["GPU 0: pid 4242 (python3)"]),
    )
    result = evaluate(HOSTS, answers(FIRST, odd_torch, blocked(), None))
    result = DoctorReport(result.hosts, result.rendezvous)
    text = render(result)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    assert not result.ok
    assert lines[0].startswith("rendezvous: not reached by every host")
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert rows["gpu-node-01"][-2:] == ["eth0", "ok"]
    assert rows["gpu-node-02"][-1] == "warning" and "2.3.1+cu118" in rows["gpu-node-02"]
    assert rows["gpu-node-03"][-2:] == ["blocked", "error"]
    assert rows["gpu-node-04"] == ["gpu-node-04", "-", "error"]
    notes = " ".join(" ".join(lines[6:]).split())  # a long note wraps
    assert "gpu-node-02: warning: torch 2.3.1+cu118 here, 2.4.0+cu121 on most hosts" in notes
    assert "gpu-node-02: warning: CUDA 11.8 here, 12.1 on most hosts" in notes
    assert "gpu-node-03: error: cannot connect to the first host's rendezvous at 10.0.0.1:29500" in notes
    assert "gpu-node-04: error: cannot connect: timed out after 10 s" in notes
    assert "every host: tmux 3.3a" in notes
    busy_result = evaluate(HOSTS[:2], answers(FIRST, busy))
    assert [f.message for f in busy_result.hosts[1].findings if f.level == "error"] == [
        "GPU 0: pid 4242 (python3), of no launcher job (a launch refuses it)"
    ]
    assert "8 H100 0G" in render(busy_result)


def test_missing_tmux_torch_workdir_and_a_full_disk_are_errors_and_a_clock_off_a_warning() -> None:
    broken = replace(
        reached("eno1"),
        tmux=None,
        torch=None,
        cuda=None,
        nccl=None,
        disks=[
            DiskSpace("working directory", "/nope", 100 << 20, exists=False),
            DiskSpace("state directory", "/s", 3 * GIB),
        ],
    )
    result = evaluate(HOSTS[:3], [*answers(FIRST, reached("eno1")), _Answer(0.05, 2.5, broken)])
    found = {(f.check, f.level) for f in result.hosts[2].findings}
    assert {("tmux", "error"), ("torch", "error"), ("disk", "error"), ("clock", "warning")} <= found
    assert ("disk", "warning") in found  # the state directory: 3G
    assert "the working directory /nope does not exist" in " ".join(render(result).split())


def test_the_first_host_unreachable_leaves_the_network_unchecked_not_failed() -> None:
    result = evaluate(HOSTS[:2], answers(None, report()))
    assert result.hosts[0].level == "error"
    assert [(f.check, f.level) for f in result.hosts[1].findings if f.level != "ok"] == [("network", "warning")]


def test_json_has_every_finding_and_the_levels() -> None:
    data = doctor_json(evaluate(HOSTS[:3], answers(FIRST, reached("eno1"), blocked())))
    assert data["ok"] is False and [h["level"] for h in data["hosts"]] == ["ok", "ok", "error"]
    assert data["hosts"][2]["report"]["probes"][0]["error"] == "timed out after 3 s"


@pytest.mark.parametrize(
    ("count", "models", "free", "cell"),
    [(0, [], [], "none"), (8, ["NVIDIA H100 80GB HBM3"], [81000, 40000], "8 H100 39G"), (2, ["A", "B"], [], "2 mixed")],
)
def test_gpu_cells(count: int, models: list[str], free: list[int], cell: str) -> None:
    assert gpu_cell(count, models, free) == cell


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (300 * GIB, 3 * GIB + GIB // 4, 310 << 20)] == ["300G", "3.2G", "310M"]


# ------------------------------------------------------------------ the node side, on this machine


def test_versions_are_read_without_importing_torch() -> None:
    import torch

    was_imported = "torch" in sys.modules
    sys.modules.pop("torch", None)
    try:
        version, cuda, nccl = node_doctor.torch_versions()
        assert "torch" not in sys.modules
    finally:
        if was_imported:
            sys.modules["torch"] = torch
    assert version == torch.__version__ and cuda == torch.version.cuda
    assert nccl is None if cuda is None else nccl


def test_the_cuda_line_of_torch_version_py(tmp_path: Path) -> None:
    assert node_doctor._CUDA.search("cuda: Optional[str] = '12.4'\n").group(1) == "12.4"  # type: ignore[union-attr]
    assert node_doctor._CUDA.search("cuda = '11.8'").group(1) == "11.8"  # type: ignore[union-attr]
    assert node_doctor._CUDA.search("cuda: Optional[str] = None\n") is None


def test_the_agents_checkup_reports_this_machine(node: LocalNode, tmp_path: Path) -> None:
    answer = node.call(Checkup(cwd=str(tmp_path), listen=True))
    assert answer.python_version == ".".join(map(str, sys.version_info[:3]))
    assert answer.tmux and answer.port and answer.candidates
    assert answer.disks[0].exists and (answer.disks[0].free or 0) > 0
    assert answer.received <= answer.time
    missing = node.call(Checkup(cwd=str(tmp_path / "gone")))
    assert not missing.disks[0].exists and missing.port is None
