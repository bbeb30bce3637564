"""``launcher setup``: this exact launcher installed into a Python on every host (optional)."""

from __future__ import annotations

import click

from launcher.cli.common import HOSTS_HELP, connect_timeout, run


@click.command()
@click.option("--hosts", "hosts_arg", metavar="FILE", required=True, help=HOSTS_HELP)
@click.option("--python", metavar="PATH", help="The Python to install into, on every host.  [default: this one]")
@connect_timeout
def setup(hosts_arg: str, python: str | None, connect_timeout: float) -> None:
    """Install this exact launcher into PYTHON on every host, from a wheel built here.

    Not needed to launch: where a host's Python lacks this launcher, its node side is sent
    over SSH and cached there. Nothing is fetched from a package index (pip --no-deps);
    what the node side still lacks on a host (psutil, cloudpickle) is named. Exit 0 only
    when every host has it.
    """
    import os
    import sys

    from launcher.errors import HostError, JobError
    from launcher.hosts.sources import resolve_hosts
    from launcher.transport.agent import SshOptions
    from launcher.transport.install import install_everywhere

    hosts = resolve_hosts(hosts_arg, os.environ)
    ssh = SshOptions(connect_timeout=connect_timeout, python=python or sys.executable)
    results = run(install_everywhere(hosts, ssh))
    failures: dict[str, HostError] = {}
    for host, result in zip(hosts, results, strict=True):
        if isinstance(result, HostError):
            failures[host.label] = result
            continue
        lacking = f"; its node side lacks {', '.join(result.missing)} there" if result.missing else ""
        click.echo(f"{host.label}: launcher installed into {result.python}{lacking}")
    if failures:
        raise JobError(f"setup failed on {len(failures)} of {len(hosts)} host(s)", failures)
