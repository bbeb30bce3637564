"""The node side travels: nothing of launcher need be installed into the job's Python.

Every agent starts as a small bootstrap (``python -c _BOOTSTRAP``, any CPython from 3.9) that
picks the node side to run, in this order:

- *installed*: the host's Python has launcher at this exact version (and psutil);
- *cached*: ``~/.cache/launcher/node/<sha256>/`` holds this launcher's archive, unpacked;
- *sent*: neither; it says ``need``, reads the archive from stdin (the same SSH session),
  checks its hash, unpacks it under a temporary name and renames it into place (two launches
  filling the cache at once: one rename wins, the other's copy is dropped), then runs it.

A host with an older (or newer) launcher installed runs the cached one, so two hosts can never
run different node sides. The bootstrap's first line says which it ran (or why it could not);
then the agent greets as always. A warm cache costs no round trip more than an installed one.

The archive holds the node side (``launcher/node``, ``launcher/protocol``, the modules the
ranks import) under ``lib/``, with cloudpickle for ``run(fn)``, and this machine's psutil under
``fallback/``: that one is appended to ``sys.path`` only where the job's Python has no psutil
of its own, and only where its build fits the host (psutil's wheels are abi3: the same OS and
architecture suffice). It is built once per process, byte for byte the same for the same files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import platform
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher._version import __version__
from launcher.errors import AgentError

_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: no file's mtime reaches the archive

# What a rank imports of launcher (launcher.context(), run(fn)'s wrapper), without the launching side.
_NODE_INIT = '''"""launcher's node side, as the launching machine sent it (transport/node_side.py)."""

from launcher._version import __version__

_NAMES = {"context": "run_context", "RunContext": "run_context", "ContextError": "run_context"}


def __getattr__(name):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module("launcher." + _NAMES[name]), name)
    raise AttributeError("launcher's node side has no attribute %r (the launching side is not installed here)" % name)
'''
_NODE_MODULES = ("_version.py", "errors.py", "run_context.py", "visible_gpus.py")
_NODE_PACKAGES = ("node", "protocol")

# Runs on the host's Python, whichever it is: it must parse on an old one to say it is too old.
# Its arguments: this launcher's version, the archive's sha256 and size, the psutil build's tag.
_BOOTSTRAP = r"""
import os, sys
def say(kind, detail=""):
    detail = detail.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    sys.stdout.write('{"launcher_boot": "%s", "detail": "%s"}\n' % (kind, detail))
    sys.stdout.flush()
if sys.version_info < (3, 9):
    say("old", "%d.%d.%d" % tuple(sys.version_info[:3]))
    sys.exit(3)
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
import hashlib, importlib.util, io, platform, shutil, tempfile, zipfile
version, digest, size, build = sys.argv[1:5]
del sys.argv[1:5]
def installed():
    spec = importlib.util.find_spec("launcher")
    for where in (spec and spec.submodule_search_locations) or ():
        try:
            with open(os.path.join(where, "_version.py")) as f:
                return '"%s"' % version in f.read() and importlib.util.find_spec("psutil") is not None
        except OSError:
            pass
    return False
def unpack(base, home):
    for d in (os.path.dirname(base), base):
        if not os.path.isdir(d):
            os.makedirs(d, 0o700, exist_ok=True)
    say("need")
    data = sys.stdin.buffer.read(int(size))
    if len(data) != int(size) or hashlib.sha256(data).hexdigest() != digest:
        say("damaged", "%d of %s bytes came, their sha256 is not %s" % (len(data), size, digest))
        sys.exit(4)
    tmp = tempfile.mkdtemp(prefix="." + digest[:16] + ".", dir=base)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            z.extractall(tmp)
        try:
            os.rename(tmp, home)
        except OSError:
            if not os.path.isdir(home):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
mode = "installed"
if not installed():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    base = os.path.join(cache, "launcher", "node")
    home = os.path.join(base, digest)
    mode = "cached"
    if not os.path.isdir(home):
        mode = "sent"
        try:
            unpack(base, home)
        except OSError as exc:
            say("cache", "%s: %s" % (base, exc.strerror or exc))
            sys.exit(5)
    lib = os.path.join(home, "lib")
    sys.path.insert(0, lib)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([lib] + paths)
    if importlib.util.find_spec("psutil") is None:
        here = "%s-%s" % (sys.platform, platform.machine())
        if build not in (here, "%s-cp%d%d" % ((here,) + tuple(sys.version_info[:2]))):
            say("psutil", here)
            sys.exit(6)
        fallback = os.path.join(home, "fallback")
        sys.path.append(fallback)
        os.environ["LAUNCHER_NODE_FALLBACK"] = fallback
say("run", mode)
import runpy
runpy.run_module("launcher.node", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Archive:
    """This launcher's node side as one zip, named by its content."""

    data: bytes
    digest: str
    """sha256 of ``data``, hex: the name of its directory in a host's cache."""
    psutil_build: str
    """Where this machine's psutil runs: ``linux-x86_64`` (abi3), else with ``-cp311``."""


def agent_argv(python: str) -> list[str]:
    """The command that starts a host's agent through the bootstrap (``exec``'d over SSH)."""
    archive = node_archive()
    boot = [__version__, archive.digest, str(len(archive.data)), archive.psutil_build]
    # -W ignore: a third-party library's warnings (say, a deprecation at import) must not
    # reach the user's terminal. The bootstrap drops sys.path[0] (what -P does from 3.11).
    return [python, "-W", "ignore", "-c", _BOOTSTRAP, *boot, "serve"]


async def arrive(agent: Any, timeout: float) -> str:
    """Read the bootstrap's first line, send the archive if it asks: how the node side came
    (``installed``, ``cached`` or ``sent``), or an AgentError in one line naming the host."""
    said = await agent.receive(timeout)
    if said.get("launcher_boot") == "need":
        await agent.send_bytes(node_archive().data)
        said = await agent.receive(timeout)
    kind, detail = said.get("launcher_boot"), str(said.get("detail", ""))
    if kind == "run" and detail in ("installed", "cached", "sent"):
        return detail
    raise AgentError(agent.host.label, _failure(kind, detail, said))


def _failure(kind: object, detail: str, said: dict[str, Any]) -> str:
    if kind == "old":
        return f"its Python is {detail}: the node side needs Python 3.9 or later (pass --python PATH)"
    if kind == "damaged":
        return f"the node side arrived damaged ({detail}); nothing was kept, try again"
    if kind == "cache":
        return f"cannot write the node side's cache {detail}"
    if kind == "psutil":
        build = node_archive().psutil_build
        return f"the job's Python has no psutil and this machine's ({build}) does not fit {detail}: pip install psutil there"
    return f"the node agent said something unexpected: {str(said)[:200]}"


@functools.cache
def node_archive() -> Archive:
    """Built once per process: a few ms for ~1 MB, and only read files (no mtime) go in."""
    import cloudpickle
    import psutil

    launcher_dir = Path(__file__).resolve().parent.parent
    entries: dict[str, bytes] = {"lib/launcher/__init__.py": _NODE_INIT.encode()}
    for name in _NODE_MODULES:
        entries[f"lib/launcher/{name}"] = (launcher_dir / name).read_bytes()
    for package in _NODE_PACKAGES:
        entries.update(_package_files(launcher_dir / package, "lib/launcher/"))
    entries.update(_package_files(Path(cloudpickle.__file__).parent, "lib/"))
    psutil_files = _package_files(Path(psutil.__file__).parent, "fallback/")
    entries.update(psutil_files)
    abi3 = all("abi3" in name for name in psutil_files if name.endswith(".so"))
    build = f"{sys.platform}-{platform.machine()}" + ("" if abi3 else f"-cp{sys.version_info[0]}{sys.version_info[1]}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name])
    data = buffer.getvalue()
    return Archive(data=data, digest=hashlib.sha256(data).hexdigest(), psutil_build=build)


def _package_files(package: Path, prefix: str) -> dict[str, bytes]:
    """A package's installed files: its modules and extensions, no caches, no tests."""
    files = {}
    for directory, subdirs, names in os.walk(package):
        subdirs[:] = [d for d in subdirs if d not in ("__pycache__", "tests")]
        for name in names:
            if name.endswith((".py", ".so")):
                path = Path(directory, name)
                files[prefix + path.relative_to(package.parent).as_posix()] = path.read_bytes()
    return files
