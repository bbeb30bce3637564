"""The options of the job itself, shared by ``launch`` and ``sbatch``: one definition each,
and one mapping onto ``make_spec``'s keywords."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

FORWARDED_HELP = (
    "Forward NCCL_*, CUDA_*, PYTHON*, TORCH*, HF_*, ACCELERATE_*, PATH, LD_LIBRARY_PATH, VIRTUAL_ENV, OMP_NUM_THREADS."
)


def job_options(nproc_default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--name`` ... ``--torchrun-args``, in the order ``--help`` lists them;
    ``nproc_default`` says what ``--nproc-per-node`` is when not given."""
    options = [
        click.option("--name", help="Job name.  [default: SCRIPT stem + time]"),
        click.option(
            "--nproc-per-node", metavar="N", help=f"Processes per host (or gpu/auto).  [default: {nproc_default}]"
        ),
        click.option(
            "-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set a variable for the job (repeatable)."
        ),
        click.option("--env-file", multiple=True, metavar="FILE", help="KEY=VALUE lines for the job (repeatable)."),
        click.option("--forward-env/--no-forward-env", default=True, show_default=True, help=FORWARDED_HELP),
        click.option("--python", metavar="PATH", help="Python on the hosts.  [default: this one]"),
        click.option("--cwd", metavar="DIR", help="Working directory on the hosts.  [default: this one]"),
        click.option(
            "--runner",
            type=click.Choice(["torchrun", "python", "exec"]),
            default="torchrun",
            show_default=True,
            help="python: SCRIPT once per host with MASTER_ADDR/MASTER_PORT/NODE_RANK/NNODES; exec: SCRIPT is a command.",
        ),
        click.option(
            "--rdzv-port",
            type=click.IntRange(1, 65535),
            help="Rendezvous port on the first host.  [default: a free one]",
        ),
        click.option(
            "--max-restarts", type=click.IntRange(min=0), default=0, show_default=True, help="torchrun restarts."
        ),
        click.option(
            "--torchrun-args", metavar="ARGS", help="More torchrun options in one string: '--monitor-interval 1'."
        ),
        click.option(
            "--hang-timeout",
            metavar="DURATION",
            help="Call the job hung when no rank printed for this long (90s, 10m, 1h): take its stacks, stop it.",
        ),
        click.option(
            "--on-hang",
            type=click.Choice(["stop", "keep"]),
            default="stop",
            show_default=True,
            help="What a hang does to the job (keep: leave it running for inspection).",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):  # click lists options in the order they decorate
            command = option(command)
        return command

    return decorate


def spec_keywords(options: dict[str, Any]) -> dict[str, Any]:
    """``make_spec``'s keywords for the options above."""
    return {
        "name": options["name"],
        "nproc_per_node": options["nproc_per_node"],
        "assignments": options["env"],
        "env_files": options["env_file"],
        "forward_env": options["forward_env"],
        "python": options["python"],
        "cwd": options["cwd"],
        "runner": options["runner"],
        "rdzv_port": options["rdzv_port"],
        "max_restarts": options["max_restarts"],
        "torchrun_args": options["torchrun_args"] or (),
        "hang_timeout": options["hang_timeout"],
        "on_hang": options["on_hang"],
    }
