"""What the benchmark ran on: hardware, versions of everything measured, the load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.procs import REPO


def describe_machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(_meminfo_kb("MemTotal") / 2**20, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "versions": {
            **{
                name: _package_version(name)
                for name in ("torch", "asyncssh", "libtmux", "psutil", "click", "torchrunx", "deepspeed")
            },
            "openssh": _first_line(["ssh", "-V"]),
            "pdsh": _first_line(["pdsh", "-V"]),
            "tmux": _first_line(["tmux", "-V"]),
        },
        "launcher_commit": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "load_at_start": os.getloadavg(),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return sys.platform


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    return ((result.stdout + result.stderr).strip().splitlines() or ["?"])[0]
