"""``.ci/run-unprivileged`` run whole, with a stand-in interpreter first on PATH: it opens
for others' search only the directories whose own mode lacks it, and takes back only those."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or shutil.which("useradd") is None,
    reason="runs as root (it adds the launcher-ci user, as CI does)",
)


def test_run_unprivileged_gives_back_only_the_search_bits_it_added(tmp_path: Path) -> None:
    closed = tmp_path / "closed"  # others cannot search it
    searchable = closed / "searchable"  # others could, but not reach it: its bit is kept
    bin_dir = searchable / "bin"
    bin_dir.mkdir(parents=True)
    # The stand-in answers the script's question for the interpreter's path, then runs as
    # the test "suite": it shows the modes the unprivileged user meets.
    stand_in = bin_dir / "python3"
    stand_in.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ]; then echo "$0"; exit 0; fi\n'
        f"echo ran as $(id -un); stat -c '%n %a' {closed} {searchable} {bin_dir}\n"
    )
    stand_in.chmod(0o755)
    modes = {closed: 0o700, searchable: 0o755, bin_dir: 0o750}
    for path, mode in modes.items():
        path.chmod(mode)

    ran = subprocess.run(
        [str(REPO / ".ci" / "run-unprivileged")],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "ran as launcher-ci",
        f"{closed} 701",
        f"{searchable} 755",
        f"{bin_dir} 751",
    ]
    assert {path: path.stat().st_mode & 0o777 for path in modes} == modes
