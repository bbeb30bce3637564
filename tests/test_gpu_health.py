"""GPU health from ``nvidia-smi -q`` and ``nvidia-smi nvlink -s`` (``node/gpu_health.py``),
read from outputs laid out as real drivers print them, and judged into the doctor's findings.

The layouts (section names, nesting, indentation) follow published outputs; the values are
ours, to make each fault appear:
- R535, Hopper-era ECC (SRAM/DRAM) and "GPU Link Info": ``nvidia-smi -q`` in NVIDIA/DCGM#152
  (https://github.com/NVIDIA/DCGM/issues/152), driver 535.104.05;
- R580 "Clocks Event Reasons" with HW Thermal/Power Brake nested under HW Slowdown:
  bigstack-oss/cubecos#312 (https://github.com/bigstack-oss/cubecos/issues/312), 580.105.06;
- pre-Ampere "Single Bit/Double Bit" ECC, "Pending Page Blacklist", "Remapped Rows : N/A":
  NVIDIA/dcgm-exporter#16 (https://github.com/NVIDIA/dcgm-exporter/issues/16);
- the Remapped Rows block (Correctable/Uncorrectable Error, Pending, Remapping Failure
  Occurred): ``man nvidia-smi`` (ROW_REMAPPER) and microsoft/superbenchmark#239;
- ``nvidia-smi nvlink -s``: ``Link N: 26.562 GB/s`` or ``Link N: <inactive>``, NVIDIA's
  nvidia-smi documentation (nvlink --status).
"""

from __future__ import annotations

from launcher.doctor.checks import _gpus
from launcher.node.gpu_health import judge, parse_nvlink_status, parse_query
from launcher.protocol.doctor import GpuHealth, GpuReport, NodeReport

HEALTHY_H100 = """
==============NVSMI LOG==============

Timestamp                                 : Sun Dec  6 12:00:00 2026
Driver Version                            : 535.104.05
CUDA Version                              : 12.2

Attached GPUs                             : 2
GPU 00000000:18:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    PCI
        Bus                               : 0x18
        GPU Link Info
            PCIe Generation
                Max                       : 5
                Current                   : 1
                Device Current            : 1
                Device Max                : 5
                Host Max                  : 5
            Link Width
                Max                       : 16x
                Current                   : 16x
    Clocks Event Reasons
        Idle                              : Active
        Applications Clocks Setting       : Not Active
        SW Power Cap                      : Not Active
        HW Slowdown                       : Not Active
            HW Thermal Slowdown           : Not Active
            HW Power Brake Slowdown       : Not Active
        Sync Boost                        : Not Active
        SW Thermal Slowdown               : Not Active
        Display Clock Setting             : Not Active
    ECC Errors
        Volatile
            SRAM Correctable              : 0
            SRAM Uncorrectable Parity     : 0
            SRAM Uncorrectable SEC-DED    : 0
            DRAM Correctable              : 3
            DRAM Uncorrectable            : 0
        Aggregate
            SRAM Correctable              : 0
            SRAM Uncorrectable Parity     : 0
            SRAM Uncorrectable SEC-DED    : 0
            DRAM Correctable              : 12
            DRAM Uncorrectable            : 1
    Retired Pages
        Single Bit ECC                    : N/A
        Double Bit ECC                    : N/A
        Pending Page Blacklist            : N/A
    Remapped Rows
        Correctable Error                 : 0
        Uncorrectable Error               : 0
        Pending                           : No
        Remapping Failure Occurred        : No
        Bank Remap Availability Histogram
            Max                           : 2560 bank(s)
            High                          : 0 bank(s)
            Partial                       : 0 bank(s)
            Low                           : 0 bank(s)
            None                          : 0 bank(s)
    Clocks
        Graphics                          : 345 MHz
        SM                                : 345 MHz
        Memory                            : 2619 MHz
    Max Clocks
        Graphics                          : 1980 MHz
        SM                                : 1980 MHz
        Memory                            : 2619 MHz
GPU 00000000:2A:00.0
    Product Name                          : NVIDIA H100 80GB HBM3
    PCI
        GPU Link Info
            Link Width
                Max                       : 16x
                Current                   : 8x
    Clocks Event Reasons
        Idle                              : Not Active
        SW Power Cap                      : Active
        HW Slowdown                       : Active
            HW Thermal Slowdown           : Active
            HW Power Brake Slowdown       : Not Active
        SW Thermal Slowdown               : Not Active
    ECC Errors
        Volatile
            SRAM Correctable              : 0
            SRAM Uncorrectable Parity     : 0
            SRAM Uncorrectable SEC-DED    : 1
            DRAM Correctable              : 0
            DRAM Uncorrectable            : 2
    Remapped Rows
        Correctable Error                 : 0
        Uncorrectable Error               : 4
        Pending                           : Yes
        Remapping Failure Occurred        : Yes
    Clocks
        SM                                : 1095 MHz
    Max Clocks
        SM                                : 1980 MHz
"""

OLD_V100 = """
Attached GPUs                             : 1
GPU 00000000:D8:00.0
    Product Name                          : Tesla V100-PCIE-32GB
    Clocks Throttle Reasons
        Idle                              : Not Active
        HW Slowdown                       : Not Active
        SW Thermal Slowdown               : Active
    ECC Errors
        Volatile
            Single Bit
                Device Memory             : 0
                Total                     : 0
            Double Bit
                Device Memory             : 1
                Register File             : 0
                L1 Cache                  : N/A
                Total                     : 1
    Retired Pages
        Single Bit ECC                    : 0
        Double Bit ECC                    : 1
        Pending Page Blacklist            : Yes
    Remapped Rows                         : N/A
"""

NVLINK = """GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-072b19bd-4ccf-63cf-6435-cf462aff833d)
\t Link 0: 26.562 GB/s
\t Link 1: 26.562 GB/s
\t Link 2: 26.562 GB/s
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-172b19bd-4ccf-63cf-6435-cf462aff833d)
\t Link 0: 26.562 GB/s
\t Link 1: <inactive>
\t Link 2: <inactive>
"""


def test_a_healthy_gpu_has_nothing_to_say_and_its_clocks_are_read() -> None:
    gpus = parse_query(HEALTHY_H100)
    assert len(gpus) == 2
    healthy = judge(0, gpus[0], parse_nvlink_status(NVLINK)[0])
    # Idle, PCIe Gen 1 at idle, corrected ECC and an aggregate (not volatile) count: all fine.
    assert healthy == GpuHealth(0, "NVIDIA H100 80GB HBM3", [], [], 345, 1980)


def test_every_fault_of_a_sick_gpu_is_named() -> None:
    sick = judge(1, parse_query(HEALTHY_H100)[1], parse_nvlink_status(NVLINK)[1])
    assert sick.errors == [
        "3 uncorrectable ECC error(s) since the driver loaded",
        "row remapping failed: its memory cannot be repaired",
    ]
    assert sick.warnings == [
        "a row remap is pending: reset the GPU",
        "clocks held down: HW Slowdown, HW Thermal Slowdown",
        "PCIe link x8 of x16",
        "NVLink: 2 of 3 links inactive",
    ]
    assert (sick.sm_clock_mhz, sick.max_sm_clock_mhz) == (1095, 1980)


def test_older_drivers_layout_is_read_too() -> None:
    (gpu,) = parse_query(OLD_V100)
    found = judge(0, gpu)
    assert found.name == "Tesla V100-PCIE-32GB"
    assert found.errors == ["1 uncorrectable ECC error(s) since the driver loaded"]
    assert found.warnings == ["a page retirement is pending: reset the GPU", "clocks held down: SW Thermal Slowdown"]


def test_nvlink_status_counts_links_up_and_inactive() -> None:
    assert parse_nvlink_status(NVLINK) == {0: (3, 0), 1: (1, 2)}
    assert parse_nvlink_status("") == {}


def test_the_doctor_flags_the_gpu_with_its_index() -> None:
    sick = judge(1, parse_query(HEALTHY_H100)[1])
    report = NodeReport(0.0, 0.0, "3.11", "tmux", "2.5", "12.4", "2.21", GpuReport(2), [], gpu_health=[sick])
    found = _gpus(report)
    assert [(f.level, f.message) for f in found][:2] == [
        ("error", "GPU 1 (NVIDIA H100 80GB HBM3): 3 uncorrectable ECC error(s) since the driver loaded"),
        ("error", "GPU 1 (NVIDIA H100 80GB HBM3): row remapping failed: its memory cannot be repaired"),
    ]
    assert ("warning", "GPU 1 (NVIDIA H100 80GB HBM3): PCIe link x8 of x16") in [(f.level, f.message) for f in found]
