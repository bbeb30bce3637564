"""One node of a ``launcher sbatch`` job: ``srun ... python -P -m launcher.node.slurm_task HOST PORT TASK``.

srun starts one per node. It fills in what only the node knows (the rendezvous that the
batch script found, its run directory, its node rank ``SLURM_NODEID``), writes the job's
spec into the same ``RunDir`` a launch uses, so that ``launcher status``, ``logs`` and
``kill`` find it, and runs the node supervisor in the foreground: inside the SLURM step,
where SLURM tracks and signals it, and srun's ``--kill-on-bad-exit`` stops the other
nodes when one fails (in place of the supervisors' teardown: no teardown port is opened, so
no teardown secret is needed). It exits with the command's exit status.
"""

from __future__ import annotations

import json
import os
import sys

from launcher.node.rundir import JobSpec, RunDir
from launcher.protocol.base import JOB_MARKER, RUN_DIR_VARIABLE
from launcher.protocol.codec import ProtocolError, decode
from launcher.protocol.slurm import SlurmTask, slurm_field

USAGE = "usage: python -m launcher.node.slurm_task RDZV_HOST RDZV_PORT TASK_JSON"


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with every ``slurm_field`` placeholder replaced by its value."""
    for name, value in values.items():
        text = text.replace(slurm_field(name), value)  # type: ignore[arg-type]
    return text


def prepare(task: SlurmTask, rdzv_host: str, rdzv_port: str, environ: dict[str, str]) -> RunDir:
    """This node's run directory, reset, holding the spec of the command to run."""
    node_rank = environ.get("SLURM_NODEID", "0")
    command = task.first if node_rank == "0" else task.rest
    run = RunDir.of(task.job)
    run.reset()
    values = {"rdzv_host": rdzv_host, "rdzv_port": rdzv_port, "run_dir": str(run.path), "node_rank": node_rank}
    env = dict(environ)
    env.update({key: fill(value, values) for key, value in command.env.items()})
    env[JOB_MARKER] = task.job
    env[RUN_DIR_VARIABLE] = str(run.path)
    argv = [fill(arg, values) for arg in command.argv]
    run.write_spec(JobSpec(job=task.job, argv=argv, env=env, cwd=task.cwd))
    return run


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    rdzv_host, rdzv_port, payload = argv
    try:
        task = decode(SlurmTask, json.loads(payload))
    except (ValueError, ProtocolError) as exc:
        print(f"launcher: bad task for this node: {exc}", file=sys.stderr)
        return 2
    run = prepare(task, rdzv_host, rdzv_port, dict(os.environ))
    from launcher.node.supervisor import supervise

    supervise(run)
    ended = run.read_exit()
    return min(ended.exit_code, 255) if ended is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
