"""Each GPU's health on this node, from ``nvidia-smi -q`` and ``nvidia-smi nvlink -s``.

Standard library only; ``nvidia_smi.run`` starts the tool, the parsers here are pure. Read:
uncorrectable ECC errors since the driver loaded (an error), a failed row remap (an error),
a pending row remap or page retirement (a warning: reset the GPU), clocks held down by
hardware or thermal slowdown (a warning), a PCIe link narrower than the GPU's maximum (a
warning; the generation drops at idle by design, so it is not judged), NVLink links down
while others are up (a warning). ``nvidia-smi -q``'s layout differs between drivers (ECC
as Single/Double Bit before Hopper, SRAM/DRAM after; "Clocks Throttle Reasons" before
R535, "Clocks Event Reasons" after): both are read.
"""

from __future__ import annotations

import re

from launcher.node import nvidia_smi
from launcher.protocol.doctor import GpuHealth

Tree = dict[str, "str | Tree"]

_SLOWDOWNS = ("HW Slowdown", "HW Thermal Slowdown", "HW Power Brake Slowdown", "SW Thermal Slowdown")
_GPU_SECTION = re.compile(r"GPU [0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+$")
_NVLINK_GPU = re.compile(r"GPU (\d+): ")
_NVLINK_LINK = re.compile(r"\s*Link (\d+): (.+)")


def read_health(timeout: float = nvidia_smi.DEFAULT_TIMEOUT_S) -> tuple[list[GpuHealth], str | None]:
    """Every GPU's health, or why it could not be read."""
    query = nvidia_smi.run(["-q"], timeout)
    if query.error or query.no_devices:
        return [], query.error
    links = nvidia_smi.run(["nvlink", "-s"], timeout)
    nvlinks = parse_nvlink_status(links.text) if links.error is None else {}
    return [judge(i, gpu, nvlinks.get(i)) for i, gpu in enumerate(parse_query(query.text))], None


def parse_query(text: str) -> list[Tree]:
    """``nvidia-smi -q``: one tree per GPU (``Key : value`` lines nested by indentation)."""
    gpus: list[Tree] = []
    stack: list[tuple[int, Tree]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, colon, value = line.strip().partition(":")
        if indent == 0:
            if _GPU_SECTION.match(line.strip()):
                gpus.append({})
                stack = [(0, gpus[-1])]
            else:
                stack = []
            continue
        if not stack:
            continue
        while len(stack) > 1 and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if colon:
            parent.setdefault(key.strip(), value.strip())
        else:  # a section; lines indented under a ``key : value`` line stay in its section
            section: Tree = {}
            parent[key.strip()] = section
            stack.append((indent, section))
    return gpus


def parse_nvlink_status(text: str) -> dict[int, tuple[int, int]]:
    """``nvidia-smi nvlink -s``: per GPU index, (links up, links inactive)."""
    found: dict[int, tuple[int, int]] = {}
    gpu: int | None = None
    for line in text.splitlines():
        if header := _NVLINK_GPU.match(line):
            gpu = int(header.group(1))
            found[gpu] = (0, 0)
        elif (link := _NVLINK_LINK.match(line)) and gpu is not None:
            up, down = found[gpu]
            inactive = "inactive" in link.group(2).lower()
            found[gpu] = (up + (not inactive), down + inactive)
    return found


def judge(index: int, gpu: Tree, nvlink: tuple[int, int] | None = None) -> GpuHealth:
    """Errors and warnings of one GPU's tree (pure)."""
    errors: list[str] = []
    warnings: list[str] = []
    uncorrectable = _uncorrectable_ecc(_section(gpu, "ECC Errors", "Volatile"))
    if uncorrectable:
        errors.append(f"{uncorrectable} uncorrectable ECC error(s) since the driver loaded")
    remap = _section(gpu, "Remapped Rows")
    if _text(remap, "Remapping Failure Occurred") == "Yes":
        errors.append("row remapping failed: its memory cannot be repaired")
    if _text(remap, "Pending") == "Yes":
        warnings.append("a row remap is pending: reset the GPU")
    retired = _section(gpu, "Retired Pages")
    if "Yes" in (_text(retired, "Pending Page Blacklist"), _text(retired, "Pending Page Retirement")):
        warnings.append("a page retirement is pending: reset the GPU")
    reasons = _section(gpu, "Clocks Event Reasons") or _section(gpu, "Clocks Throttle Reasons")
    held = [name for name in _SLOWDOWNS if _text(reasons, name) == "Active"]
    if held:
        warnings.append(f"clocks held down: {', '.join(held)}")
    width = _section(gpu, "PCI", "GPU Link Info", "Link Width")
    current, most = _number(_text(width, "Current")), _number(_text(width, "Max"))
    if current is not None and most is not None and current < most:
        warnings.append(f"PCIe link x{current} of x{most}")
    if nvlink is not None and nvlink[0] and nvlink[1]:
        warnings.append(f"NVLink: {nvlink[1]} of {sum(nvlink)} links inactive")
    sm = _number(_text(_section(gpu, "Clocks"), "SM"))
    top = _number(_text(_section(gpu, "Max Clocks"), "SM"))
    return GpuHealth(index, _text(gpu, "Product Name") or "?", errors, warnings, sm, top)


def _uncorrectable_ecc(volatile: Tree) -> int:
    """Before Hopper ``Double Bit > Total``; after, every ``... Uncorrectable ...`` count."""
    double = _number(_text(_section(volatile, "Double Bit"), "Total"))
    if double is not None:
        return double
    counts = [_number(v) for k, v in volatile.items() if "Uncorrectable" in k and isinstance(v, str)]
    return sum(c for c in counts if c is not None)


def _section(tree: Tree, *path: str) -> Tree:
    for key in path:
        found = tree.get(key)
        if not isinstance(found, dict):
            return {}
        tree = found
    return tree


def _text(tree: Tree, key: str) -> str | None:
    found = tree.get(key)
    return found if isinstance(found, str) else None


def _number(value: str | None) -> int | None:
    """``16x`` -> 16, ``1980 MHz`` -> 1980, ``N/A`` -> None."""
    match = re.match(r"\d+", value or "")
    return int(match.group()) if match else None
