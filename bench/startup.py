"""Measurement 5, start-up: ``launcher --help`` and ``python -c "import launcher"``,
against the interpreter's own start (``python -c pass``), wall time and peak RSS.

Peak RSS comes from ``/usr/bin/time``, not from our own ``wait4``: Linux carries a
process's high-water mark across ``exec``, so a child forked from this (much larger)
Python process would report at least our size.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.procs import run_timed
from bench.results import Sample

TIME = "/usr/bin/time"  # GNU time; .ci/setup's Debian has it


def commands() -> dict[str, list[str]]:
    python = sys.executable
    # The console script next to the interpreter: a pyenv or conda shim in front of it
    # would add its own start-up (pyenv's is a bash script) to the measurement.
    script = Path(python).parent / "launcher"
    help_argv = [str(script), "--help"] if script.exists() else [python, "-m", "launcher", "--help"]
    return {
        "python -c pass": [python, "-c", "pass"],
        'python -c "import launcher"': [python, "-c", "import launcher"],
        "launcher --help": help_argv,
        "node agent import": [python, "-P", "-c", "import launcher.node"],
    }


def measure_startup(repeat: int, record: Callable[[Sample], None]) -> None:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        for name, argv in commands().items():
            # Without GNU time (Debian package "time"), no RSS rather than a wrong one.
            timed = [TIME, "-f", "%M", "-o", str(rss_file), *argv] if os.path.exists(TIME) else argv
            run_timed(timed, env)  # warm the page cache
            for rep in range(repeat):
                run = run_timed(timed, env)
                error = None if run.ok else run.problem()
                rss_mb = int(rss_file.read_text().split()[-1]) / 1024 if run.ok and timed is not argv else None
                values: dict[str, float | None] = {"wall_s": run.wall_s, "cpu_s": run.cpu_s, "max_rss_mb": rss_mb}
                record(Sample("startup", name, 0, rep, values, error))
