"""The blocking Python API: ``launch`` a script, ``run`` or ``submit`` a function.

::

    import launcher

    job = launcher.launch("train.py", "--lr", "3e-4", hosts="hosts", nproc_per_node=4)
    for line in job.logs(follow=True):
        print(f"[{line.host} rank {line.rank}] {line.text}")
    result = job.wait()                          # JobFailed names the host, rank and traceback

    def world(scale):
        ctx = launcher.context()
        return ctx.rank * scale

    values = launcher.run(world, 10, hosts="hosts", nproc_per_node=2)   # {0: 0, 1: 10, ...}

Every keyword ``make_spec`` takes is an option here (``include``, ``exclude``, ``name``,
``assignments``, ``env_files``, ``forward_env``, ``python``, ``cwd``, ``rdzv_port``,
``nnodes``, ``max_restarts``, ``torchrun_args``, ``force``, ``teardown``,
``connect_timeout``, ``max_parallel``...), checked there as ``launcher launch`` checks
its flags: one code path for both, environment forwarding included. These calls work in
a script and inside a running event loop (Jupyter) alike; async code can use
``launch_job`` and friends instead.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from launcher.api.call_function import pickle_call
from launcher.api.job import Job
from launcher.api.loop import run_sync
from launcher.errors import JobFailed, LauncherError, UsageError
from launcher.hosts.sources import HostsArg
from launcher.job.records import unique_job_name
from launcher.launching import commands
from launcher.launching.spec import LaunchSpec, make_spec
from launcher.launching.start import launch_job
from launcher.protocol.base import CALL_FILE, CALL_MODULE

_KILL_GRACE_S = 3.0
"""``run`` interrupted or timed out: the ranks get this long after SIGTERM."""


def launch(
    script: str,
    *args: Any,
    hosts: HostsArg = None,
    nproc_per_node: int | str | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> Job:
    """Start ``script`` with ``args`` on every host (or on none), as ``launcher launch`` does.

    ``hosts``: a hosts file, an inline list (``"node1,node2:4"``), ``"localhost"`` (the
    default), ``"slurm"``, or Host records. ``env``: variables for the job, applied after
    the forwarded ones. ``options``: any keyword of ``make_spec``. Arguments are passed
    as ``str(arg)``. ``restarts=N`` and ``spares=`` (as ``--restarts``/``--spares``) launch
    it again after a failure or a lost host: ``Job.attempts``. Returns once the job runs everywhere; raises UsageError or
    HostsFileError for bad input before any host is contacted, JobError when a host fails
    to start (nothing is left running then).
    """
    spec = make_spec(script, [str(a) for a in args], hosts=hosts, nproc_per_node=nproc_per_node, env=env, **options)
    return _start(spec)


def submit(
    fn: Callable[..., Any],
    *args: Any,
    hosts: HostsArg = None,
    nproc_per_node: int | str | None = None,
    env: Mapping[str, str] | None = None,
    fn_kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> Job:
    """Start ``fn(*args, **fn_kwargs)`` on every rank of a new job; ``Job.result()`` waits
    for the values (submitit's shape).

    Each rank runs under torchrun, so ``torch.distributed.init_process_group()`` works
    inside ``fn``, and ``launcher.context()`` tells it its rank. ``fn`` and its arguments
    travel pickled with cloudpickle: a function of ``__main__`` (a script, a notebook)
    travels whole; one of a module must be importable on the nodes (the same code at
    the same path, ``cwd`` on ``sys.path``). NotPicklableError names what cannot be
    pickled, before anything starts. The pickled call and each rank's pickled return
    value are limited to 8 MiB.
    """
    if "runner" in options:
        raise UsageError("run() and submit() always use torchrun; launch() takes runner=")
    payload = pickle_call(fn, args, fn_kwargs or {})
    name = options.pop("name", None) or _function_job_name(fn)
    spec = make_spec(CALL_MODULE, (), hosts=hosts, nproc_per_node=nproc_per_node, env=env, name=name, **options)
    spec = replace(
        spec,
        torchrun_args=("--module", *spec.torchrun_args),
        files={CALL_FILE: base64.b64encode(payload).decode("ascii")},
    )
    return _start(spec)


def run(
    fn: Callable[..., Any],
    *args: Any,
    hosts: HostsArg = None,
    nproc_per_node: int | str | None = None,
    env: Mapping[str, str] | None = None,
    fn_kwargs: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    **options: Any,
) -> dict[int, Any]:
    """Run ``fn(*args, **fn_kwargs)`` on every rank of a new job; each global rank's return value.

    As ``submit(...).result(timeout)``. A rank that raises is re-raised here as JobFailed
    naming its host and rank, with the remote traceback; the other ranks are stopped by
    the job's teardown. Interrupted (Ctrl-C) or after ``timeout`` seconds
    (JobTimeoutError), the job is killed: it never outlives the call.
    """
    job = submit(fn, *args, hosts=hosts, nproc_per_node=nproc_per_node, env=env, fn_kwargs=fn_kwargs, **options)
    try:
        return job.result(timeout)
    except JobFailed:
        raise
    except BaseException:
        with contextlib.suppress(LauncherError):
            job.kill(grace=_KILL_GRACE_S)
        raise


def _start(spec: LaunchSpec) -> Job:
    record = run_sync(launch_job(spec))
    return Job(record, replace(spec.ssh, python=spec.python))


def _function_job_name(fn: Callable[..., Any]) -> str:
    """``<function name>-<time>``, unique among the jobs launched from here."""
    return unique_job_name(commands.default_job_name(f"{getattr(fn, '__name__', 'function')}.py"))
