"""Which Python and which torch an interpreter runs, without importing torch.

The agent's greeting carries both, so the launching machine compares every host's
environment with its own at no extra round trip. Importing torch costs seconds; the
installed version is the name of its ``torch-<version>.dist-info`` directory, the first
one along ``sys.path``, as ``importlib.metadata`` would find it (about 1 ms: one
directory listing per ``sys.path`` entry up to site-packages).
"""

from __future__ import annotations

import os
import sys

NODE_FALLBACK_VARIABLE = "LAUNCHER_NODE_FALLBACK"
"""Set where the node side runs as the launching machine sent it: a directory of libraries
(psutil) appended to ``sys.path``, after the job's own (``launcher/node/__init__.py``)."""

_PREFIX = "torch-"
_SUFFIXES = (".dist-info", ".egg-info")


def python_version() -> str:
    """``major.minor.micro`` of this interpreter."""
    return ".".join(str(part) for part in sys.version_info[:3])


def torch_version(path: list[str] | None = None) -> str | None:
    """The version of the torch that ``import torch`` would load here, or None."""
    for directory in sys.path if path is None else path:
        try:
            names = os.listdir(directory or ".")
        except OSError:
            continue
        found = _dist_info_version(names)
        if found is not None:
            return found
    return None


def _dist_info_version(names: list[str]) -> str | None:
    for name in names:
        for suffix in _SUFFIXES:
            if name.startswith(_PREFIX) and name.endswith(suffix):
                return name[len(_PREFIX) : -len(suffix)]
    return None
