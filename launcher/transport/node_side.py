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
ranks import) under ``lib/`` (first on the job's PYTHONPATH), and this machine's psutil and
cloudpickle (for ``run(fn)``) under ``fallback/``, appended to ``sys.path``: the job's own win.
Where the job's Python has no psutil, this machine's must fit the host (psutil's wheels are
abi3: the same OS and architecture suffice), else the launch fails saying what to install. Its files are read once per process and named by a hash of their content
(the bootstrap recomputes it from what it unpacked); the zip is built only for a host that asks.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
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
_NODE_PACKAGES = ("node", "protocol", "startup")  # startup: the ranks' stack hook

# Runs on the host's Python, whichever it is: it must parse on an old one to say it is too old.
# Its arguments: this launcher's version, the node side's content digest, the psutil build's tag.
# The archive comes as a line with its size, then its bytes; unpacked, its files must hash to the digest.
# Its first line names it in `ps` (and for whoever looks for the job's agents there, tests too).
_BOOTSTRAP = r"""# launcher.node serve: the node agent, through its bootstrap
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
import hashlib, importlib.util, io, platform, shutil, tempfile, time, zipfile
version, digest, build = sys.argv[1:4]
del sys.argv[1:4]
def installed():
    spec = importlib.util.find_spec("launcher")
    for where in (spec and spec.submodule_search_locations) or ():
        try:
            with open(os.path.join(where, "_version.py")) as f:
                return '"%s"' % version in f.read() and importlib.util.find_spec("psutil") is not None
        except OSError:
            pass
    return False
def content_digest(top):
    names = []
    for d, _, files in os.walk(top):
        names += [os.path.relpath(os.path.join(d, f), top).replace(os.sep, "/") for f in files]
    h = hashlib.sha256()
    for name in sorted(names):
        with open(os.path.join(top, name), "rb") as f:
            data = f.read()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()
def unpack(base, home):
    for d in (os.path.dirname(base), base):
        if not os.path.isdir(d):
            os.makedirs(d, 0o700, exist_ok=True)
    for name in os.listdir(base):  # what a bootstrap killed while unpacking left, a day ago or more
        left = os.path.join(base, name)
        if name.startswith(".") and time.time() - os.path.getmtime(left) > 86400:
            shutil.rmtree(left, ignore_errors=True)
    say("need")
    tmp = tempfile.mkdtemp(prefix="." + digest[:16] + ".", dir=base)
    try:
        try:
            size = int(sys.stdin.buffer.readline())
            data = sys.stdin.buffer.read(size)
            if len(data) != size:
                raise ValueError("%d of %d bytes came" % (len(data), size))
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                z.extractall(tmp)
            if content_digest(tmp) != digest:
                raise ValueError("its files do not hash to %s" % digest)
        except (OSError, MemoryError):
            raise
        except Exception as exc:
            say("damaged", "%s: %s" % (type(exc).__name__, exc))
            sys.exit(4)
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
class NodeSide:
    """This launcher's node side: its files, named by their content."""

    files: dict[str, bytes]
    """Path in the archive -> content."""
    digest: str
    """sha256 over the files (``content_digest``): the name of its directory in a host's cache."""
    psutil_build: str
    """Where this machine's psutil runs: ``linux-x86_64`` (abi3), else with ``-cp311``."""

    @functools.cached_property
    def archive(self) -> bytes:
        """The files as one zip, built only for a host that asks: the same bytes each time."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in sorted(self.files):
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, self.files[name])
        return buffer.getvalue()


def content_digest(files: dict[str, bytes]) -> str:
    """sha256 over names and contents, in name order: what the bootstrap recomputes on arrival."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "big") + files[name])
    return digest.hexdigest()


def agent_argv(python: str) -> list[str]:
    """The command that starts a host's agent through the bootstrap (``exec``'d over SSH)."""
    side = node_side()
    boot = [__version__, side.digest, side.psutil_build]
    # -W ignore: a third-party library's warnings (say, a deprecation at import) must not
    # reach the user's terminal. The bootstrap drops sys.path[0] (what -P does from 3.11).
    return [python, "-W", "ignore", "-c", _BOOTSTRAP, *boot, "serve"]


async def arrive(agent: Any, timeout: float) -> str:
    """Read the bootstrap's first line, send the archive if it asks: how the node side came
    (``installed``, ``cached`` or ``sent``), or an AgentError in one line naming the host."""
    said = await agent.receive(timeout)
    if said.get("launcher_boot") == "need":
        archive = node_side().archive
        await agent.send_bytes(b"%d\n" % len(archive) + archive)
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
        build = node_side().psutil_build
        return f"the job's Python has no psutil and this machine's ({build}) does not fit {detail}: pip install psutil there"
    return f"the node agent said something unexpected: {str(said)[:200]}"


@functools.cache
def node_side() -> NodeSide:
    """Read once per process (~1 MB, a few ms); psutil and cloudpickle are found, not imported."""
    launcher_dir = Path(__file__).resolve().parent.parent
    files: dict[str, bytes] = {"lib/launcher/__init__.py": _NODE_INIT.encode()}
    for name in _NODE_MODULES:
        files[f"lib/launcher/{name}"] = (launcher_dir / name).read_bytes()
    for package in _NODE_PACKAGES:
        files.update(_package_files(launcher_dir / package, "lib/launcher/"))
    files.update(_package_files(_installed("cloudpickle"), "fallback/"))
    psutil_files = _package_files(_installed("psutil"), "fallback/")
    files.update(psutil_files)
    abi3 = all("abi3" in name for name in psutil_files if name.endswith(".so"))
    build = f"{sys.platform}-{platform.machine()}" + ("" if abi3 else f"-cp{sys.version_info[0]}{sys.version_info[1]}")
    return NodeSide(files=files, digest=content_digest(files), psutil_build=build)


def _installed(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AgentError("localhost", f"{package} is not installed here: the node side cannot travel without it")
    return Path(next(iter(spec.submodule_search_locations)))


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
