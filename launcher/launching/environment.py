"""The job's environment as the launching shell sees it: forwarded variables, env files, -e.

Values travel inside the JSON request to the node agent, which hands them to the job's
process directly: no shell and no SSH ``env`` request (sshd's AcceptEnv would drop it)
sits in between, so they arrive byte for byte.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from launcher.errors import UsageError

FORWARDED_PREFIXES = ("NCCL_", "PYTHON", "CUDA_", "TORCH", "PYTORCH_", "HF_", "ACCELERATE_")
FORWARDED_NAMES = ("OMP_NUM_THREADS", "LD_LIBRARY_PATH", "PATH", "VIRTUAL_ENV")
NOT_FORWARDED = ("CUDA_VISIBLE_DEVICES",)
"""Matching a prefix, but about this machine: its GPU choice would pin every host's ranks to
the same indices (``-e`` or ``--include host:0,1`` still set it). ``CUDA_DEVICE_ORDER`` is
forwarded: it picks a numbering, the same on every host, not devices."""
ENV_FILE_NAME = ".launcher_env"
"""Read from the working directory, else the home directory (as DeepSpeed's .deepspeed_env)."""

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET = re.compile(r"TOKEN|KEY|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The launching shell's variables that users expect on every rank."""
    return {
        k: v
        for k, v in environ.items()
        if (k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES) and k not in NOT_FORWARDED
    }


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``KEY=VALUE`` per line; ``#`` comments, blank lines and a leading ``export`` allowed.

    The value is everything after the first ``=``, verbatim (no quotes removed, no
    expansion): what the file says is what the job gets.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a BOM is not part of line 1
    except FileNotFoundError:
        raise UsageError(f"{path}: env file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read env file: {exc}") from None
    env = {}
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").lstrip()
        key, sep, value = stripped.partition("=")
        if not sep or not _KEY.fullmatch(key):
            # The line is not echoed: it may hold a secret.
            raise UsageError(f"{path}:{number}: expected KEY=VALUE with KEY a variable name")
        env[key] = value
    return env


def parse_assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` from ``-e``; the value is kept byte for byte."""
    key, sep, value = text.partition("=")
    if not sep or not _KEY.fullmatch(key):
        raise UsageError(f"bad -e {text!r}: expected KEY=VALUE with KEY a valid variable name")
    return key, value


def user_env(
    *,
    environ: Mapping[str, str],
    cwd: str,
    env_files: Sequence[str] = (),
    assignments: Sequence[str] = (),
    forward: bool = True,
) -> dict[str, str]:
    """The variables for the job; later sources win: forwarded, .launcher_env, --env-file, -e."""
    env = forwarded_env(environ) if forward else {}
    for candidate in (Path(cwd) / ENV_FILE_NAME, Path(os.path.expanduser("~")) / ENV_FILE_NAME):
        if candidate.is_file():
            env.update(read_env_file(candidate))
            break
    for path in env_files:
        env.update(read_env_file(path))
    env.update(parse_assignment(item) for item in assignments)
    return env


def is_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret: *TOKEN*, *KEY*, *PASSWORD*, *SECRET*,
    *CREDENTIAL* (the one definition: ``masked`` and ``launcher sbatch -o`` use it)."""
    return _SECRET.search(name) is not None


def masked(env: Mapping[str, str]) -> dict[str, str]:
    """For showing a command: values of *TOKEN*, *KEY*, *PASSWORD*, *SECRET* hidden."""
    return {k: "****" if is_secret(k) and v else v for k, v in env.items()}
