"""``launcher sync``, the sync progress bar, and how ``status`` shows which code a job runs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from launcher.cli.common import HOSTS_HELP, connect_timeout, run

if TYPE_CHECKING:
    from launcher.job.records import JobRecord
    from launcher.sync.run import SyncProgress, SyncReport

SYNC_MAX_HELP = "Refuse to sync more than this (500M, 2G).  [default: 1G]"


@click.command("sync")
@click.option("--hosts", "hosts_arg", metavar="FILE", required=True, help=HOSTS_HELP)
@click.option("--remote-dir", metavar="DIR", help="Where the copy goes on the hosts.  [default: the same path]")
@click.option("--dry-run", is_flag=True, help="List what would be copied and deleted where; change nothing.")
@click.option("--sync-max", metavar="SIZE", default="1G", help=SYNC_MAX_HELP)
@connect_timeout
@click.option(
    "--max-parallel", type=click.IntRange(min=1), default=128, show_default=True, help="SSH handshakes at once."
)
@click.argument("directory", required=False, default=".")
def sync(directory: str, hosts_arg: str, remote_dir: str | None, dry_run: bool, **options: Any) -> None:
    """Copy DIRECTORY (default: this one) to every host: only what changed, on every host or on none.

    In a git work tree: the tracked and untracked-but-not-ignored files (never .git).
    Elsewhere: every file but those .launcherignore ignores (gitignore syntax).
    """
    from launcher.hosts.sources import resolve_hosts
    from launcher.sync.run import parse_size, sync_tree
    from launcher.transport.agent import SshOptions

    hosts = resolve_hosts(hosts_arg)
    ssh = SshOptions(connect_timeout=options["connect_timeout"], max_parallel=options["max_parallel"])
    with SyncBar() as bar:
        report = run(
            sync_tree(
                directory,
                hosts,
                remote_dir=remote_dir,
                ssh=ssh,
                max_bytes=parse_size(options["sync_max"]),
                dry_run=dry_run,
                on_progress=bar.update,
            )
        )
    print_report(report)


def print_report(report: SyncReport) -> None:
    from launcher.protocol.sync import display_path
    from launcher.sync.run import human_bytes

    verb = "would copy" if report.dry_run else "copied"
    click.echo(
        f"{'dry run: ' if report.dry_run else ''}{display_path(report.source)} -> {display_path(report.remote_dir)}: "
        f"{report.files} file(s), {human_bytes(report.size)}, code {report.fingerprint}"
    )
    for host in report.hosts:
        if host.source:
            click.echo(f"{host.host}  its directory is the source itself (a shared disk, or this machine): left alone")
            continue
        if host.writer is not None:
            click.echo(
                f"{host.host}  shares {host.writer}'s directory (a shared disk): checked what {host.writer} wrote"
            )
            continue
        click.echo(
            f"{host.host}  {verb} {len(host.copied)} file(s) ({human_bytes(host.bytes)}), "
            f"{'would delete' if report.dry_run else 'deleted'} {len(host.deleted)}"
        )
        if report.dry_run:
            for path in host.copied:
                click.echo(f"  + {display_path(path)}")
            for path in host.deleted:
                click.echo(f"  - {display_path(path)}")
    if not report.dry_run:
        same = "the same on every host" if report.same_everywhere else "NOT the same on every host"
        click.echo(f"tree {report.digest[:12]}: {same}")


class SyncBar:
    """Bytes and hosts as they are synced, on a terminal; nothing on a pipe or with NO_COLOR."""

    def __init__(self) -> None:
        import os

        self._live = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
        self._progress: Any = None
        self._bytes: Any = None
        self._hosts: Any = None

    def __enter__(self) -> SyncBar:
        if self._live:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TextColumn("{task.fields[hosts]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._bytes = self._progress.add_task("syncing", total=None, hosts="")
        return self

    def update(self, progress: SyncProgress) -> None:
        if self._progress is not None:
            hosts = f"{progress.hosts_done}/{progress.hosts_total} hosts"
            self._progress.update(self._bytes, completed=progress.bytes_done, total=progress.bytes_total, hosts=hosts)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def code_json(record: JobRecord) -> dict[str, Any]:
    """``status --json``'s ``code``: null, or the fingerprint and whether every host has it."""
    if record.code is None:
        return {"code": None}
    same = bool(record.code_hosts) and all(d == record.code_digest for d in record.code_hosts.values())
    return {
        "code": {
            "fingerprint": record.code,
            "digest": record.code_digest,
            "same_on_every_host": same,
            "hosts": record.code_hosts,
        }
    }


def print_code(record: JobRecord) -> None:
    """The note under ``status``'s table: which code the job runs, and whether everywhere."""
    code = code_json(record)["code"]
    if code is None:
        return
    if code["same_on_every_host"]:
        click.echo(f"code  {code['fingerprint']}, the same on every host (synced)")
    else:
        differ = ", ".join(h for h, d in code["hosts"].items() if d != code["digest"]) or "unknown"
        click.echo(f"code  {code['fingerprint']}; differs on {differ}")
