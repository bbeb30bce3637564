"""The node side on every CPython from 3.9 to 3.13: it imports, and the wire decodes there.

Each interpreter that pyenv (or PATH) has here is tried; one that is missing is skipped,
naming it. The agent itself under each interpreter: ``test_node_travels.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


def interpreter(version: str) -> str | None:
    """A CPython ``version`` on this machine, or None."""
    for found in sorted(Path("/root/.pyenv/versions").glob(f"{version}.*/bin/python3"), reverse=True):
        return str(found)
    return shutil.which(f"python{version}")


def python_or_skip(version: str) -> str:
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (pyenv install {version}, or python{version} on PATH)")
    return python


# Run under the other interpreter with only the checkout on its path: every module of the
# node side and the wire imports, and every message's type hints evaluate and decode.
_PROBE = """
import dataclasses, importlib, pkgutil, sys
import launcher.node, launcher.protocol
from launcher.protocol import codec
names = ["launcher._version", "launcher.run_context", "launcher.visible_gpus", "launcher.errors"]
for package in (launcher.node, launcher.protocol):
    names += [package.__name__ + "." + m.name for m in pkgutil.iter_modules(package.__path__)]
checked = 0
for name in names:
    module = importlib.import_module(name)
    for value in list(vars(module).values()):
        if isinstance(value, type) and value.__module__ == name:
            if dataclasses.is_dataclass(value) or (issubclass(value, tuple) and hasattr(value, "_fields")):
                codec._hints(value)
                checked += 1
from launcher.protocol.messages import Hello
hello = Hello(protocol=1, version="v", hostname="h", address=None, python="p", pid=1, python_version="3", torch=None)
assert codec.decode(Hello, codec.to_wire(hello)) == hello
print(checked, "types", sys.version_info[:2])
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_node_side_imports_and_decodes(version: str) -> None:
    python = python_or_skip(version)
    done = subprocess.run(
        [python, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{_PROBE}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "types" in done.stdout
