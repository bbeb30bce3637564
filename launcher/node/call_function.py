"""What each rank of ``launcher.run`` runs: ``torchrun --module launcher.node.call_function``.

torchrun has set the rank's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``, ``LOCAL_RANK``...), so ``init_process_group()`` works inside the function
as in any torchrun script. The worker reads the pickled call from the run directory
(``inputs/call.pkl``, sent with ``Start.files``), calls it, and writes its outcome to
``results/<rank>.pkl``: a pickled dict, ``{"ok": True, "value": ...}`` or
``{"ok": False, "exception": "ValueError: boom", "traceback": [...], "time": ...}``.

After an exception it prints the traceback (the job's logs and ``status`` show it) and
exits 1, so that the job fails and the teardown stops the other ranks. Only this worker
imports cloudpickle; the node agent only moves bytes (``node/results.py``).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from launcher.node.rundir import RunDir
from launcher.protocol.base import CALL_FILE, RESULT_LIMIT, RUN_DIR_VARIABLE
from launcher.protocol.python_env import NODE_FALLBACK_VARIABLE


def _cloudpickle() -> Any:
    """The job's cloudpickle, else the one a node side that was sent brought (NODE_FALLBACK_VARIABLE)."""
    fallback = os.environ.get(NODE_FALLBACK_VARIABLE)
    if fallback and fallback not in sys.path:
        sys.path.append(fallback)
    import cloudpickle

    return cloudpickle


def main() -> int:
    cloudpickle = _cloudpickle()

    run = RunDir(Path(os.environ[RUN_DIR_VARIABLE]))
    rank = int(os.environ.get("RANK", "0"))
    try:
        fn, args, kwargs = cloudpickle.loads(run.input_path(CALL_FILE).read_bytes())
    except Exception as exc:  # noqa: BLE001 - a module missing on this node, most often
        return _failed(run, rank, exc, f"cannot unpickle the function on this node: {_describe(exc)}")
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever it raised travels back to the caller
        return _failed(run, rank, exc, _describe(exc))
    _end_process_group()
    try:
        data = cloudpickle.dumps({"ok": True, "value": value})
    except Exception as exc:  # noqa: BLE001 - pickle raises many types
        return _failed(run, rank, exc, f"the return value of rank {rank} cannot be pickled: {_describe(exc)}")
    if len(data) > RESULT_LIMIT:
        size = f"{len(data) / 2**20:.1f} MiB"
        return _failed(
            run,
            rank,
            None,
            f"the return value of rank {rank} is {size} pickled, over the {RESULT_LIMIT >> 20} MiB limit "
            "(write big results to a file instead)",
        )
    run.write_result(rank, data)
    return 0


def _failed(run: RunDir, rank: int, exc: BaseException | None, exception: str) -> int:
    """Record the failure as the rank's outcome, print it, and give the exit status."""
    cloudpickle = _cloudpickle()

    lines: list[str] = []
    if exc is not None:
        # From the frame below main(): the function's own frames, not this wrapper's.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        lines = "".join(traceback.format_exception(type(exc), exc, tb)).splitlines()
    outcome: dict[str, Any] = {"ok": False, "exception": exception, "traceback": lines, "time": time.time()}
    run.write_result(rank, cloudpickle.dumps(outcome))
    print("\n".join(lines) if lines else exception, file=sys.stderr, flush=True)
    return 1


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _end_process_group() -> None:
    """A group the function left open is closed (torch warns otherwise); torch is not
    imported for it when the function did not."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
