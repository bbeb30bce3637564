"""The test cluster's second login user, without root (``start_cluster(..., second_user=True)``).

As on a shared cluster: ``lnch-<token>-u``, in a group of its own, with no password (``*``:
no password login, but not a locked account, which sshd without PAM would refuse) and a
home of its own, ``/home/<name>`` (0700, owned by it). Its ``.ssh/`` (0700) holds
its key, ``known_hosts`` (the hosts' keys), ``config`` (the same host aliases as root's, as
this user) and ``authorized_keys``, which every host's sshd reads for it: owner and modes
as sshd's StrictModes asks (the cluster's sshd turns StrictModes off for root's key files,
which live under /tmp).

To run Python and the launcher the user needs search (x) permission on every directory
above the interpreter, the checkout and its home. Where "others" lack it, the cluster adds
``o+x`` while it runs and takes it back at close (``remove_stale_clusters`` after a crash);
a directory that another live cluster opened stays open until the last of them is gone.
Nothing else changes mode, and no bit that was there before is taken away.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOGIN_SHELL = "/bin/bash"
PASSED_VARIABLES = ("PATH", "LANG", "LC_ALL", "TERM", "PYTHONPATH")
"""What a user's environment keeps of the test process's (``TestUser.env``)."""


class UserError(RuntimeError):
    """The test user could not be created or removed."""


@dataclass(frozen=True)
class TestUser:
    """The cluster's second login user, seen from the launching side."""

    __test__ = False  # a library class, not a pytest test class

    name: str
    uid: int
    gid: int
    home: Path
    """``/home/<name>``, 0700, owned by the user; every host sees it (a shared home)."""

    @property
    def ssh_dir(self) -> Path:
        """``id_ed25519``, ``authorized_keys``, ``known_hosts``, ``config``."""
        return self.home / ".ssh"

    @property
    def ssh_config(self) -> Path:
        return self.ssh_dir / "config"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a login of this user: HOME, USER, PATH and the locale.

        No XDG_STATE_HOME, here or on the hosts: the launcher's state is then
        ``~/.local/state`` on both sides, as on a real cluster with a shared home.
        """
        env = {name: os.environ[name] for name in PASSED_VARIABLES if name in os.environ}
        env.update(HOME=str(self.home), USER=self.name, LOGNAME=self.name, SHELL=LOGIN_SHELL)
        env.update(extra)
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the launching side as this user: its uid, its group, no other groups."""
        return subprocess.run(
            list(argv),
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            env=self.env() if env is None else env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def add_user(name: str, home: Path) -> TestUser:
    """Create the user and its empty home and ``.ssh`` (root's until ``hand_over_home``)."""
    created = subprocess.run(
        [
            "useradd",
            "--home-dir",
            str(home),
            "--no-create-home",
            "--user-group",
            "--shell",
            LOGIN_SHELL,
            "--password",
            "*",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if created.returncode != 0:
        raise UserError(f"useradd {name}: {created.stderr.strip()}")
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    entry = pwd.getpwnam(name)
    return TestUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=home)


def hand_over_home(user: TestUser) -> None:
    """Give the user everything in its home, once the cluster has written its files."""
    for directory, _, files in os.walk(user.home):
        for entry in [directory, *(os.path.join(directory, name) for name in files)]:
            os.chown(entry, user.uid, user.gid, follow_symlinks=False)


def remove_user(name: str) -> None:
    """Delete the user and its group (not its home). Gone already: fine."""
    # --force: also while a process of the user still runs (a test that failed half-way).
    removed = subprocess.run(["userdel", "--force", name], capture_output=True, text=True, check=False)
    user_unknown = 6
    if removed.returncode not in (0, user_unknown):
        raise UserError(f"userdel {name}: {removed.stderr.strip()}")


def paths_to_search(repo: Path, home: Path) -> list[Path]:
    """Where the user must get through: the interpreter (as called and as resolved), the
    Python environment, the checkout and the user's home."""
    executable = Path(sys.executable)
    paths = [executable.parent, executable.resolve().parent, Path(sys.prefix), Path(sys.base_prefix), repo]
    return [*paths, home.parent]


def directories_to_open(paths: Iterable[Path], claimed: set[str]) -> list[Path]:
    """``paths`` and the directories above them that others cannot search, and those
    another live cluster opened (``claimed``: it would close them while this one runs)."""
    found: list[Path] = []
    for path in paths:
        for directory in [path, *path.parents]:
            if directory in found or not directory.is_dir():
                continue
            if str(directory) in claimed or not directory.stat().st_mode & stat.S_IXOTH:
                found.append(directory)
    return found


def open_for_search(directories: Iterable[Path]) -> None:
    for directory in directories:
        directory.chmod(stat.S_IMODE(directory.stat().st_mode) | stat.S_IXOTH)


def close_for_search(directories: Iterable[str], claimed_by_others: set[str]) -> None:
    """Take back ``o+x`` from what this cluster opened and no other live cluster holds."""
    for name in directories:
        if name in claimed_by_others:
            continue
        try:
            mode = os.stat(name).st_mode
            os.chmod(name, stat.S_IMODE(mode) & ~stat.S_IXOTH)
        except FileNotFoundError:  # gone with its test's tmp dir
            continue
