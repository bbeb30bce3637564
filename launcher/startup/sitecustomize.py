"""launcher's startup hook: the in-process fallback of ``launcher stack`` (not a package: this
directory is put first on the job's ``PYTHONPATH``, so it must hold this file only).

In a rank of a launcher job (``LAUNCHER_JOB``, ``LAUNCHER_RUN_DIR`` and ``RANK`` set), it
registers ``faulthandler`` on ``SIGRTMIN + 5``: the signal makes the process write every
thread's stack to ``<run dir>/faulthandler/<pid>.txt`` from a C signal handler, without
stopping it, even while Python is blocked in a collective. py-spy needs ptrace; this needs
nothing. Any other process (torchrun, the user's tools) is left untouched.

Then the user's own ``sitecustomize`` (the next one on ``sys.path``), if any, is imported.
"""

import importlib
import os
import sys


def _arm() -> None:
    run_dir = os.environ.get("LAUNCHER_RUN_DIR")
    if not run_dir or "RANK" not in os.environ or not os.environ.get("LAUNCHER_JOB"):
        return
    import faulthandler
    import signal

    directory = os.path.join(run_dir, "faulthandler")
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return
    try:
        fd = os.open(os.path.join(directory, f"{os.getpid()}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return
    stream = os.fdopen(fd, "w")
    globals()["_stream"] = stream  # kept open for the life of the process: faulthandler writes to it
    signum = signal.SIGRTMIN + 5
    if signal.getsignal(signum) in (signal.SIG_DFL, None):
        # faulthandler chains to the handler before it: the default one would end the process.
        signal.signal(signum, _ignore)
    faulthandler.register(signum, file=stream, all_threads=True, chain=True)


def _ignore(signum: int, frame: object) -> None:
    """The signal's Python handler under faulthandler's: nothing to do (unlike ``SIG_IGN``,
    a handler is not inherited by the programs a rank runs)."""


def _chain() -> None:
    """Import the user's ``sitecustomize``: ours leaves ``sys.path`` and ``sys.modules`` first."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")  # the next one on sys.path
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_arm()
_chain()
