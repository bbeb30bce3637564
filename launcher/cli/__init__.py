"""The ``launcher`` command: parse options, call the library, show the result.

Exit codes: 0 success; 1 the job or a host failed; 2 bad usage or input; 130 Ctrl-C
during a launch (which is rolled back). Expected errors print one line, no traceback
(``--debug`` shows it). Kept light: ``launcher --help`` imports neither asyncssh nor torch.

    __init__.py     the command group and ``main`` (errors -> messages and exit codes)
    launching.py    ``launch``
    job_options.py  the job's own options, shared by ``launch`` and ``sbatch``
    sbatch.py       ``sbatch``: the batch script of a launch (printed, written, or submitted)
    jobs.py         ``logs``, ``status``, ``kill``, ``attach``, ``list``
    stack.py        ``stack``: where every rank is, as a roll-call
    syncing.py      ``sync``, its progress bar, and which code a job runs
    doctor.py       ``doctor``: one table, one row per host
    setup.py        ``setup``: this launcher installed into a Python on every host (optional)
    common.py       what the commands share: options, finding a job, running the library
    render.py       tables, log lines, dry runs, progress
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import click

from launcher._version import __version__
from launcher.cli.doctor import doctor
from launcher.cli.jobs import attach, kill, list_jobs, logs, readmit, status
from launcher.cli.launching import launch
from launcher.cli.sbatch import sbatch
from launcher.cli.setup import setup
from launcher.cli.stack import stack
from launcher.cli.syncing import sync
from launcher.errors import LauncherError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="launcher")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Launch distributed PyTorch jobs on hosts you can SSH into: torchrun in tmux on every host.

    Shell completion: eval "$(_LAUNCHER_COMPLETE=bash_source launcher)" (zsh_source, fish_source).
    """
    ctx.obj = {"debug": debug}


for _command in (launch, sbatch, sync, logs, status, stack, kill, readmit, attach, list_jobs):
    cli.add_command(_command)
cli.add_command(doctor)
cli.add_command(setup)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one place turns errors into messages and exit codes."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    if debug:
        # Every warning shown, the import-time ones of asyncssh's dependencies included.
        warnings.simplefilter("default")
        with contextlib.suppress(ImportError):
            import asyncssh  # noqa: F401
    else:
        # A third-party library's warning is nothing a user of the CLI can act on.
        warnings.simplefilter("ignore")
    try:
        result = cli.main(args=argv, prog_name="launcher", standalone_mode=False)
    except click.exceptions.Abort:  # click's name for Ctrl-C; a launch is rolled back by then
        click.echo("Interrupted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except LauncherError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        click.echo("Interrupted.", err=True)
        return 130
    return result if isinstance(result, int) else 0
