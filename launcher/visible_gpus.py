"""How many CUDA devices this process can use, decided without importing torch (``run_context.py``).

Standard library only: a training script imports it through ``launcher.context()``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

_NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
_WHOLE_NUMBER = re.compile(r"[0-9]+")


def visible_gpu_count(env: Mapping[str, str]) -> int:
    """How many CUDA devices this process can use, decided without importing torch.

    Importing torch here would cost seconds and hundreds of MB in a process that may
    never use it, and asking it (``torch.cuda.is_available()``) initialises CUDA, after
    which CUDA fails in workers started by fork: reading the context must not change
    what the process can do next. So torch is asked only when the script has already
    imported it: a CPU-only build means no CUDA, and once CUDA is initialised its own
    count costs nothing. Otherwise the count comes from the inputs CUDA itself reads:
    the driver's GPU list (``/proc/driver/nvidia/gpus``, one entry per GPU, present
    exactly when the NVIDIA driver is loaded), narrowed by ``CUDA_VISIBLE_DEVICES``.
    """
    answer = _torch_gpu_count()
    if answer is not None:
        return answer
    try:
        physical = sum(1 for _ in _NVIDIA_GPUS.iterdir())
    except OSError:
        return 0
    listed = env.get("CUDA_VISIBLE_DEVICES")
    return physical if listed is None else _count_visible(listed, physical)


def _count_visible(listed: str, physical: int) -> int:
    # As CUDA reads it: the list ends at its first invalid entry ("0,1,-1,2" is two GPUs,
    # "" and "-1" none); entries are indices or GPU-/MIG- UUIDs. MIG devices count as one
    # together: a CUDA process can use only one MIG device (NVIDIA's MIG user guide).
    count, mig = 0, 0
    for entry in (part.strip() for part in listed.split(",")):
        if (_WHOLE_NUMBER.fullmatch(entry) and int(entry) < physical) or entry.startswith("GPU-"):
            count += 1
        elif entry.startswith("MIG-"):
            mig = 1
        else:
            break
    return min(count + mig, physical)


def _torch_gpu_count() -> int | None:
    """Torch's count if torch is imported and knows it for free; None to look elsewhere."""
    torch = sys.modules.get("torch")
    version = getattr(torch, "version", None)
    if torch is None or version is None:  # not imported, or still being imported
        return None
    if getattr(version, "cuda", None) is None and getattr(version, "hip", None) is None:
        return 0  # a CPU-only build: no "cuda:<n>" device works, whatever the hardware
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        return int(cuda.device_count())
    return None
