"""The two sides stay apart: what runs on the nodes imports nothing of the launching side.

Read from the source (every ``import`` and ``from ... import`` in every module, including
those inside functions), so a lazy import cannot sneak the launching side onto a node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "launcher"
SHARED = {"launcher", "launcher.protocol", "launcher._version"}
"""What both sides may import: the version and the wire."""
NEVER_ON_A_NODE = {"torch", "asyncssh", "click", "rich", "cloudpickle"}
"""Heavy or launching-side libraries; a worker the node starts may import them, the agent not."""
WORKER_MODULES = {"launcher/node/call_function.py"}
"""Runs inside the job's own processes (under torchrun), not in the agent."""


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module == "launcher")
    return names


def is_shared(name: str) -> bool:
    return name in SHARED or name.startswith("launcher.protocol") or name == "launcher.__version__"


NODE_MODULES = sorted(PACKAGE.glob("node/*.py"))


@pytest.mark.parametrize("path", NODE_MODULES, ids=lambda p: p.name)
def test_node_modules_import_only_the_node_side_and_the_wire(path: Path) -> None:
    launching = {
        name
        for name in imports_of(path)
        if name.startswith("launcher") and not name.startswith("launcher.node") and not is_shared(name)
    }
    assert launching == set(), f"{path.name} imports the launching side"


@pytest.mark.parametrize("path", NODE_MODULES, ids=lambda p: p.name)
def test_the_agent_imports_nothing_heavy(path: Path) -> None:
    if str(path.relative_to(PACKAGE.parent)) in WORKER_MODULES:
        pytest.skip("runs in the job's processes")
    heavy = {name for name in imports_of(path) if name.partition(".")[0] in NEVER_ON_A_NODE}
    assert heavy == set()


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("protocol/*.py")), ids=lambda p: p.name)
def test_the_wire_is_standard_library_only(path: Path) -> None:
    import sys

    outside = {
        name
        for name in imports_of(path)
        if name.partition(".")[0] not in sys.stdlib_module_names and not is_shared(name)
    }
    assert outside == set()


def test_the_cli_is_the_only_user_of_click_and_rich() -> None:
    users = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if {n.partition(".")[0] for n in imports_of(path)} & {"click", "rich"}
    }
    assert users and all(user.startswith("cli/") for user in users), users
