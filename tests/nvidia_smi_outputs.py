"""nvidia-smi's outputs on hardware this machine lacks, and a stand-in ``nvidia-smi`` that plays them.

The stand-in is a shell script put first on PATH: it stands for the hardware, never for
code of ours (the real node agent runs it as it would run nvidia-smi). Each output names
its source. UUIDs are in NVIDIA's format; the values differ from the sources' machines.
"""

from __future__ import annotations

import stat
from pathlib import Path

QUERY = "--query-gpu=*"
APPS = "--query-compute-apps=*"
KILL_APPS = "--query-compute-apps=pid\\ *"  # the kill's check asks for the pids only

H100_UUIDS = [f"GPU-{n}0a1c2e4-5b6d-4f80-9a1b-2c3d4e5f6a7b" for n in range(8)]

# 8 x A100 SXM4 80GB, MIG off: `--query-gpu=index,uuid,name,memory.total,memory.used,
# memory.free,mig.mode.current --format=csv,noheader,nounits`, field order and "Disabled"
# as in NVIDIA's nvidia-smi documentation (nvidia-smi --help-query-gpu) and DGX A100 reports.
EIGHT_A100 = "".join(
    f"{n}, GPU-{n}2154b1f-d355-4a0a-ab84-a001670ab3ff, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled\n"
    for n in range(8)
)

# 2 x H100 80GB HBM3, MIG off.
TWO_H100 = "".join(f"{n}, {H100_UUIDS[n]}, NVIDIA H100 80GB HBM3, 81559, 0, 81008, Disabled\n" for n in range(2))

# H100 with MIG on, two 3g.40gb instances: the `-L` lines in the shape quoted from a driver
# 530 A100 in NVIDIA/nvidia-container-toolkit#203 ("MIG 3g.40gb     Device  0: (UUID: MIG-...)"
# under its GPU; DataDog/datadog-agent#33120 shows the same for 7 x 1g.10gb on driver 535).
H100_MIG_QUERY = f"0, {H100_UUIDS[0]}, NVIDIA H100 80GB HBM3, 81559, 45, 81002, Enabled\n"
H100_MIG_LIST = f"""\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: {H100_UUIDS[0]})
  MIG 3g.40gb     Device  0: (UUID: MIG-5c6d7e8f-1a2b-5c3d-9e4f-0a1b2c3d4e5f)
  MIG 3g.40gb     Device  1: (UUID: MIG-6d7e8f9a-2b3c-5d4e-8f5a-1b2c3d4e5f6a)
"""
H100_MIG_DEVICES = ["MIG-5c6d7e8f-1a2b-5c3d-9e4f-0a1b2c3d4e5f", "MIG-6d7e8f9a-2b3c-5d4e-8f5a-1b2c3d4e5f6a"]

# A node with MIG on one GPU of four: the `-L` lines as quoted in influxdata/telegraf#5812
# (4 x A100-SXM4-80GB, GPU 0 split into four 1g.20gb devices); the query rows made to match.
MIXED_MIG_LIST = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-513536b6-7d19-9063-b049-1e69664bb298)
  MIG 1g.20gb     Device  0: (UUID: MIG-ce861fb0-a248-58ce-a9a8-f9adbc22a66a)
  MIG 1g.20gb     Device  1: (UUID: MIG-a45882f0-9215-5733-a0c1-49286ab31cb5)
  MIG 1g.20gb     Device  2: (UUID: MIG-f00d722c-f4e1-52c9-aa31-750441ae1bfe)
  MIG 1g.20gb     Device  3: (UUID: MIG-930574a9-d43a-5d2b-95da-3e68384c8d6b)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95)
GPU 2: NVIDIA A100-SXM4-80GB (UUID: GPU-5e375e7e-b41f-155b-dcdc-534524c356fc)
GPU 3: NVIDIA A100-SXM4-80GB (UUID: GPU-69ec2344-ebac-b028-f88f-452abb3d7f11)
"""
MIXED_MIG_QUERY = """\
0, GPU-513536b6-7d19-9063-b049-1e69664bb298, NVIDIA A100-SXM4-80GB, 81920, 45, 81226, Enabled
1, GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
2, GPU-5e375e7e-b41f-155b-dcdc-534524c356fc, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
3, GPU-69ec2344-ebac-b028-f88f-452abb3d7f11, NVIDIA A100-SXM4-80GB, 81920, 4, 81051, Disabled
"""

# Exit 14, output valid: the warning line on stdout as quoted on NVIDIA's developer forums
# ("WARNING: infoROM is corrupted at gpu 0000:04:00.0"); `man nvidia-smi` (RETURN VALUE):
# "14 - infoROM is corrupted", the query still answered.
INFOROM_WARNING = "WARNING: infoROM is corrupted at gpu 0000:04:00.0\n"

# Exit 15: as quoted in NVIDIA's forums and GitHub issues for a GPU that fell off the bus
# (`man nvidia-smi`: "15 - The GPU has fallen off the bus or has otherwise become inaccessible").
FELL_OFF_THE_BUS = "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error\n"

# Exit 4, `[Insufficient Permissions]` in fields that need privileges (nvidia-smi's query
# documentation lists "[Insufficient Permissions]", "[N/A]", "[Not Supported]" as values).
NOT_PERMITTED_MEMORY = "0, GPU-0, NVIDIA A10, 23028, [Insufficient Permissions], [N/A], [Not Supported]\n"

# A timeout: nvidia-smi without persistence mode takes 1-3 s per GPU to start (NVIDIA's
# driver persistence documentation); a GPU gone bad hangs it.
HANGS = "sleep 300"


def stand_in_text(answers: dict[str, tuple[str, int]], script: str = "") -> str:
    """A self-contained ``nvidia-smi`` shell script: ``answers`` maps a shell ``case``
    pattern of its arguments to (stdout, exit status); ``script`` runs instead when given."""
    lines = ["#!/bin/sh"]
    if script:
        return "\n".join([*lines, script]) + "\n"
    lines.append('case "$*" in')
    for pattern, (stdout, status) in answers.items():
        lines += [f"  {pattern})", "    cat <<'NVIDIA_SMI_OUTPUT'", stdout.rstrip("\n"), "NVIDIA_SMI_OUTPUT"]
        if not stdout:
            lines[-3:] = ["    true"]
        lines.append(f"    exit {status} ;;")
    lines += ['  *) echo "stand-in nvidia-smi: unexpected $*" >&2; exit 2 ;;', "esac"]
    return "\n".join(lines) + "\n"


def write_stand_in(directory: Path, answers: dict[str, tuple[str, int]], script: str = "") -> Path:
    """``stand_in_text`` written as ``directory/nvidia-smi``."""
    directory.mkdir(parents=True, exist_ok=True)
    executable = directory / "nvidia-smi"
    executable.write_text(stand_in_text(answers, script))
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return executable
