"""What "my code" is: the files of a directory that a sync copies, with their hashes.

In a git work tree: the tracked files and the untracked ones that are not ignored
(``git ls-files --cached --others --exclude-standard``, so ``.gitignore`` is honoured and
``.git`` is never listed), and those of its checked-out submodules (and of other git
repositories inside it) by the same rule. Elsewhere: every file, but ``.git`` and what
``.launcherignore`` (gitignore syntax, read by pathspec) ignores. A ``.launcherignore`` in
a git tree ignores more on top of ``.gitignore``.

Hashing is what a sync pays for on this machine, so hashes are kept between syncs in
``<state>/launcher/sync-cache/``, by path, size, mtime and inode: a re-sync of an
unchanged tree hashes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import LauncherError
from launcher.protocol import private
from launcher.protocol.sync import STAGING_PREFIX, SyncEntry, display_path, manifest_digest
from launcher.protocol.sync import hash_file as hash_content

if TYPE_CHECKING:
    import pathspec

IGNORE_FILE = ".launcherignore"
_RACY_S = 2.0
"""A file changed this recently may change again within its mtime's tick: never cached."""


class SyncSourceError(LauncherError):
    """The directory to sync, or a file in it, cannot be synced: ``path`` and why."""

    exit_code = 2

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{display_path(path)}: {message}")


@dataclass(frozen=True)
class Tree:
    """The files to sync, sorted by path, and what they add up to."""

    root: str
    entries: tuple[SyncEntry, ...]
    digest: str
    """``manifest_digest`` of the entries: the same tree gives the same digest on every host."""
    fingerprint: str
    """Which code this is: ``git <commit>``, ``git <commit>+<digest>`` with uncommitted
    changes, or ``tree <digest>`` outside git."""

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def largest(self, count: int = 5) -> list[tuple[str, int]]:
        """The biggest top-level entries (a directory counts all it holds), biggest first."""
        totals: dict[str, int] = {}
        for entry in self.entries:
            top, slash, _ = entry.path.partition("/")
            key = top + slash
            totals[key] = totals.get(key, 0) + entry.size
        return sorted(totals.items(), key=lambda item: -item[1])[:count]


def scan_tree(root: str, cache_dir: Path | None = None) -> Tree:
    """The tree under ``root`` (SyncSourceError: missing, unreadable, a symlink out of it)."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise SyncSourceError(root, "no such directory" if not os.path.exists(root) else "not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise SyncSourceError(root, "cannot read this directory")
    listed = _git_files(root)
    names = listed if listed is not None else _walk(root)
    names = _ignored_out(root, names)
    cache = _HashCache.load(cache_dir, root)
    entries = [e for e in (_entry(root, name, cache) for name in sorted(set(names))) if e is not None]
    cache.save()
    digest = manifest_digest(entries)
    return Tree(root, tuple(entries), digest, _fingerprint(root, digest, is_git=listed is not None))


def _git_files(root: str) -> list[str] | None:
    """The work tree's files under ``root`` (relative to it), or None outside git."""
    try:
        result = subprocess.run(
            ["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    names = [os.fsdecode(name) for name in result.stdout.split(b"\0") if name]
    # A submodule is listed as one name, its directory (git cannot list the untracked files
    # of submodules with --recurse-submodules): its files are listed by its own git, by the
    # same rule. One not checked out (no .git in it) has nothing to copy.
    return [inner for name in names for inner in _submodule_files(root, name)]


def _submodule_files(root: str, name: str) -> list[str]:
    """``[name]``, or the files of the repository at ``name``, prefixed with it."""
    path = os.path.join(root, name)
    if os.path.islink(path) or not os.path.isdir(path):
        return [name]
    if not os.path.exists(os.path.join(path, ".git")):
        return []
    return [f"{name.rstrip('/')}/{inner}" for inner in _git_files(path) or []]


def _walk(root: str) -> list[str]:
    spec = _ignore_spec(root)
    found: list[str] = []
    for directory, dirs, files in os.walk(root, onerror=_walk_error):
        rel = os.path.relpath(directory, root)
        prefix = "" if rel == "." else rel + "/"
        kept = []
        for name in sorted(dirs):
            path = prefix + name
            if os.path.islink(os.path.join(directory, name)):
                files.append(name)  # a symlink to a directory is an entry, never followed
            elif name != ".git" and not (spec and spec.match_file(path + "/")):
                kept.append(name)
        dirs[:] = kept
        found.extend(prefix + name for name in files)
    return found


def _walk_error(exc: OSError) -> None:
    raise SyncSourceError(os.fsdecode(exc.filename or ""), f"cannot read: {exc.strerror}")


def _ignore_spec(root: str) -> pathspec.GitIgnoreSpec | None:
    import pathspec

    path = os.path.join(root, IGNORE_FILE)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            return pathspec.GitIgnoreSpec.from_lines(file.read().splitlines())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SyncSourceError(path, f"cannot read: {exc.strerror}") from None
    except ValueError as exc:  # pathspec's GitWildMatchPatternError
        raise SyncSourceError(path, f"bad pattern: {exc}") from None


def _ignored_out(root: str, names: Iterable[str]) -> list[str]:
    spec = _ignore_spec(root)
    kept = []
    for name in names:
        if name.split("/", 1)[0].startswith(STAGING_PREFIX) or name.startswith(".git/"):
            continue
        if spec is not None and spec.match_file(name):
            continue
        kept.append(name)
    return kept


def _entry(root: str, name: str, cache: _HashCache) -> SyncEntry | None:
    path = os.path.join(root, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # tracked but deleted: not part of the code any more
    except OSError as exc:
        raise SyncSourceError(path, f"cannot read: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        inside = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
            raise SyncSourceError(
                path, f"a symlink to {display_path(target)}, outside the tree: it would not exist there"
            )
        return SyncEntry(name, "l", 0, 0, 0, target)
    if not stat.S_ISREG(st.st_mode):
        return None  # a directory (a git submodule), socket or fifo: no content to copy
    digest = cache.get(name, st) or cache.put(name, st, hash_file(path))
    return SyncEntry(name, "f", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns, digest)


def hash_file(path: str) -> str:
    """A file's content hash (``protocol/sync.py``: the nodes hash what arrives the same way)."""
    try:
        return hash_content(path)
    except OSError as exc:
        raise SyncSourceError(path, f"cannot read: {exc.strerror}") from None


def _fingerprint(root: str, digest: str, is_git: bool) -> str:
    if not is_git:
        return f"tree {digest[:12]}"
    head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    commit = head.stdout.strip()[:12] if head.returncode == 0 else "(no commit)"
    status = subprocess.run(
        ["git", "-C", root, "status", "--porcelain", "-z", "--", "."], capture_output=True, check=False
    )
    return f"git {commit}+{digest[:8]}" if status.stdout.strip() else f"git {commit}"


class _HashCache:
    """Hashes of the files of one tree by (size, mtime, inode), kept between syncs."""

    def __init__(self, path: Path | None, known: dict[str, list[object]]) -> None:
        self.path = path
        self.known = known
        self.fresh: dict[str, list[object]] = {}

    @classmethod
    def load(cls, cache_dir: Path | None, root: str) -> _HashCache:
        if cache_dir is None:
            return cls(None, {})
        name = hashlib.blake2b(root.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
        path = cache_dir / f"{name}.json"
        try:
            known = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, known if isinstance(known, dict) else {})
        except (OSError, ValueError):
            return cls(path, {})

    def get(self, name: str, st: os.stat_result) -> str | None:
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        value = self.known.get(name)
        if isinstance(value, list) and value[:3] == key and isinstance(value[3], str):
            self.fresh[name] = value
            return value[3]
        return None

    def put(self, name: str, st: os.stat_result, digest: str) -> str:
        if st.st_mtime < time.time() - _RACY_S:
            self.fresh[name] = [st.st_size, st.st_mtime_ns, st.st_ino, digest]
        return digest

    def save(self) -> None:
        if self.path is None or self.fresh == self.known:
            return
        try:
            # The cache and the state directory above it (<state>/launcher) are this user's only.
            private.make_dirs(self.path.parent.parent, self.path.parent.name)
            private.write_file(self.path, json.dumps(self.fresh).encode("utf-8"))
        except OSError:
            pass  # a cache that cannot be written only costs the next sync its hashing
