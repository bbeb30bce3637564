"""``launcher setup``: this exact launcher installed into a Python on every host, over SSH.

Not needed for a launch (the node side travels: ``node_side.py``); for those who want the
package on the nodes anyway (air-gapped hosts with a pip mirror, a shared env). One wheel is
built here from this checkout, sent to every host on its SSH session's stdin, and installed
with ``pip install --no-deps``: nothing is fetched from an index. What the node side would
still need there (psutil, cloudpickle for ``run(fn)``) is reported, not installed.
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from launcher._version import __version__
from launcher.errors import AgentError, HostError, UsageError
from launcher.hosts.files import Host
from launcher.transport.agent import SshOptions, connect
from launcher.transport.fanout import for_each_host

_NEEDED = ("psutil", "cloudpickle")
_SOURCE_FILES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE")
_MISSING = "launcher-missing:"

# Quoting point: the remote login shell parses this line; $1 is the Python, $2 the wheel's name.
# --ignore-requires-python: the package asks 3.11 for the launching side; the node side runs on 3.9.
_CHECK = f"import importlib.util as u; print({_MISSING!r}, *[m for m in {_NEEDED!r} if u.find_spec(m) is None])"
# Hosts sharing one env (an NFS venv) take turns: a lock directory in its prefix (mkdir is atomic).
_REMOTE = (
    'd=$(mktemp -d) || exit 1; cat > "$d/$2" || { rm -rf "$d"; exit 1; };'
    ' p=$("$1" -c "import sys; print(sys.prefix)") || { rm -rf "$d"; exit 127; }; lock="$p/.launcher-setup.lock";'
    ' n=0; until mkdir "$lock" 2>/dev/null; do n=$((n+1)); [ $n -lt 1200 ] || break; sleep 0.5; done;'
    ' "$1" -m pip install --no-deps --ignore-requires-python --disable-pip-version-check -q "$d/$2";'
    f' rc=$?; rmdir "$lock" 2>/dev/null; rm -rf "$d"; [ $rc -eq 0 ] || exit $rc; "$1" -c "{_CHECK}"'
)


@dataclass(frozen=True)
class Installed:
    """launcher installed into ``python`` on ``host``; ``missing``: what its node side lacks there."""

    host: str
    python: str
    missing: tuple[str, ...]


def build_wheel(out: Path) -> Path:
    """This launcher as a wheel, built from a copy of its source checkout (setuptools writes
    build/ beside the sources: not in the checkout), by pip, with no index and no isolation."""
    checkout = Path(__file__).resolve().parent.parent.parent
    if not (checkout / "setup.cfg").is_file():
        raise UsageError(f"launcher setup needs launcher's source checkout; {checkout} is none")
    source = out / "source"
    shutil.copytree(checkout / "launcher", source / "launcher", ignore=shutil.ignore_patterns("__pycache__"))
    for name in _SOURCE_FILES:
        if (checkout / name).is_file():
            shutil.copy2(checkout / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    built = subprocess.run(
        [*pip, "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = sorted(out.glob(f"launcher-{__version__}-*.whl"))
    if built.returncode != 0 or not wheels:
        last = (built.stderr.strip().splitlines() or ["no wheel came out"])[-1]
        raise UsageError(f"cannot build launcher's wheel: {last}")
    return wheels[0]


async def install_on(host: Host, wheel: Path, options: SshOptions) -> Installed:
    """Send ``wheel`` to ``host`` and pip-install it into ``options.python`` there."""
    argv = ["sh", "-c", _REMOTE, "setup", options.python, wheel.name]
    try:
        if host.is_local:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            stdout, stderr = await asyncio.wait_for(proc.communicate(wheel.read_bytes()), options.patience)
            status = proc.returncode
        else:
            conn = await connect(host, options)
            try:
                done = await asyncio.wait_for(
                    conn.run(shlex.join(argv), input=wheel.read_bytes(), encoding=None), options.patience
                )
            finally:
                conn.close()
            stdout, stderr, status = done.stdout or b"", done.stderr or b"", done.exit_status
    except TimeoutError:
        raise AgentError(host.label, f"the install did not end within {options.patience:g} s") from None
    out = stdout.decode(errors="replace")
    err = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if status != 0:
        if status == 127 or any("No such file" in line for line in err[-1:]):
            raise AgentError(host.label, f"python not found there: {options.python} (pass --python PATH)")
        if any("No module named pip" in line for line in err):
            raise AgentError(host.label, f"{options.python} has no pip there (python -m ensurepip, or skip setup)")
        raise AgentError(host.label, f"pip install failed: {err[-1] if err else f'exit status {status}'}")
    missing = next((line.split()[1:] for line in out.splitlines() if line.startswith(_MISSING)), [])
    return Installed(host.label, options.python, tuple(missing))


async def install_everywhere(hosts: tuple[Host, ...], options: SshOptions) -> list[Installed | HostError]:
    """Build the wheel once, install it on every host at once; each host's result or error."""
    with tempfile.TemporaryDirectory(prefix="launcher-wheel-") as out:
        wheel = await asyncio.to_thread(build_wheel, Path(out))
        return await for_each_host(hosts, lambda host: install_on(host, wheel, options))
