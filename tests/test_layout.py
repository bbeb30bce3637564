"""The house's shape: what ``.importlinter``'s contracts cannot say, and that they hold.

Who may import whom is written once, as import-linter contracts in ``.importlinter`` (run by
``lint-imports`` in ``.ci/run``): they see every import, inside functions, relative ones and
those under ``TYPE_CHECKING``. Here: that they pass, that they fail when a node module imports
the launching side, and what they cannot express: the wire's imports are the standard library
only (a contract names modules, not "whatever is not stdlib"), the node agent loads nothing
heavy when it runs, no module is over 350 lines, and each package's docstring lists its modules.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "launcher"
LINT_IMPORTS = shutil.which("lint-imports") or "lint-imports"
MAX_LINES = 350
NEVER_IN_THE_AGENT = ("torch", "asyncssh", "click", "rich", "cloudpickle")
"""Heavy or launching-side libraries; a worker the node starts may import them, the agent not."""


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(root / ".importlinter"), "--no-cache"],
        cwd=root,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_contracts_hold() -> None:
    checked = lint_imports(REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("node/status.py", "import launcher.launching.plan", "The node side imports only the wire"),
        ("node/logs.py", "from launcher.job import records  # inside a function counts too", "The node side"),
        ("protocol/base.py", "import psutil", "The wire is standard library only"),
        ("hosts/files.py", "from ..transport import agent", "The launching side in layers"),
        ("transport/connect.py", "from launcher.transport import agent", "No import cycle"),
    ],
    ids=["node->launching", "node->job", "protocol->psutil", "relative-upwards", "cycle"],
)
def test_a_broken_rule_fails_the_contracts(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "launcher", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    path = tmp_path / "launcher" / module
    text = path.read_text()
    if "inside a function" in line:
        text += f"\n\ndef _late() -> None:\n    {line}\n"
    else:
        text += f"\n{line}  # noqa\n"
    path.write_text(text)

    checked = lint_imports(tmp_path)

    assert checked.returncode != 0, checked.stdout
    broken = [row for row in checked.stdout.replace("\n", " ").split("KEPT") if "BROKEN" in row]
    assert any(contract in row for row in broken), checked.stdout


def test_the_wire_imports_the_standard_library_only() -> None:
    graph = grimp.build_graph("launcher", include_external_packages=True, cache_dir=None)
    outside = {
        (module, imported)
        for module in graph.find_descendants("launcher.protocol") | {"launcher.protocol"}
        for imported in graph.find_modules_directly_imported_by(module)
        if not imported.startswith("launcher.protocol") and imported.partition(".")[0] not in sys.stdlib_module_names
    }
    assert outside == set()


def test_the_node_agent_loads_nothing_heavy() -> None:
    # What the contracts cannot see: the agent imports launcher's face first (it is a
    # subpackage), which must stay lazy.
    code = (
        "import sys, launcher.node.agent, launcher.node.supervisor, launcher.node.slurm_task;"
        f"print(sorted(set({NEVER_IN_THE_AGENT!r}) & set(sys.modules)))"
    )
    ran = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.strip() == "[]"


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_350_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("init", sorted(PACKAGE.glob("*/__init__.py")), ids=lambda p: p.parent.name)
def test_each_package_lists_its_modules(init: Path) -> None:
    listed = ast.get_docstring(ast.parse(init.read_text())) or ""
    modules = {p.name for p in init.parent.glob("*.py")} - {"__init__.py"}
    missing = {name for name in modules if f"{name} " not in listed}
    assert missing == set(), f"{init.parent.name}/__init__.py does not list {sorted(missing)}"
