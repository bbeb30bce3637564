"""The same environment everywhere: every host's Python and torch against this machine's.

The node's greeting carries both (``Hello.python_version``, ``Hello.torch``, read from
``torch-*.dist-info`` without importing torch), so the check costs no round trip. The
launcher version is checked by the greeting itself (``VersionMismatchError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.errors import HostError, JobError
from launcher.protocol.python_env import python_version, torch_version
from launcher.transport.agent import NodeAgent


class EnvironmentMismatchError(HostError):
    """The host runs another Python or torch than this machine: ``python``, ``torch`` there."""

    def __init__(self, host: str, message: str, python: str, torch: str | None) -> None:
        self.python = python
        self.torch = torch
        super().__init__(host, message)


@dataclass(frozen=True)
class Environment:
    python: str
    torch: str | None


def local_environment() -> Environment:
    """This machine's Python and torch (torch not imported)."""
    return Environment(python_version(), torch_version())


def check_environment(agents: Sequence[NodeAgent], local: Environment | None = None) -> None:
    """JobError naming every host whose Python or torch differs from this machine's.

    With no torch here (a laptop that only launches), the hosts are compared with the
    first host's torch instead.
    """
    local = local or local_environment()
    hellos = [(a.host.label, a.hello) for a in agents if a.hello is not None]
    wanted_torch = local.torch if local.torch is not None else next((h.torch for _, h in hellos), None)
    failures: dict[str, HostError] = {}
    for label, hello in hellos:
        problems = []
        if hello.python_version and hello.python_version != local.python:
            problems.append(f"python {hello.python_version}, this machine {local.python}")
        if hello.torch != wanted_torch:
            here = "this machine" if local.torch is not None else "the first host"
            problems.append(f"torch {hello.torch or 'not installed'}, {here} {wanted_torch or 'none'}")
        if problems:
            message = f"runs {'; '.join(problems)} ({hello.python})"
            failures[label] = EnvironmentMismatchError(label, message, hello.python_version, hello.torch)
    if failures:
        raise JobError(
            "launch refused: not the same environment on every host (--allow-mismatch to launch anyway)", failures
        )
