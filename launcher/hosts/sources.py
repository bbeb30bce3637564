"""Where the hosts come from: ``--hosts`` names a file, an inline list, ``localhost`` or ``slurm``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from launcher.errors import HostsFileError
from launcher.hosts.files import LOCALHOST, Host, parse_hosts_file, parse_inline_hosts
from launcher.hosts.slurm import slurm_hosts

HostsArg = str | Sequence[Host] | None
"""What a caller may pass as hosts: a ``--hosts`` value, or Host records."""


def resolve_hosts(arg: HostsArg, environ: Mapping[str, str] | None = None) -> tuple[Host, ...]:
    """Turn the ``--hosts`` value into hosts.

    None or ``localhost``: this machine. ``slurm``: the current SLURM allocation. A path
    that exists: a hosts file. Anything with a comma: an inline list. Host records are
    taken as they are.
    """
    if arg is not None and not isinstance(arg, str):
        hosts = tuple(arg)
        if not hosts:
            raise HostsFileError("hosts", None, "no hosts given")
        return hosts
    if arg is None or arg == "localhost":
        return (LOCALHOST,)
    if arg == "slurm":
        return slurm_hosts(os.environ if environ is None else environ)
    if not arg.strip():
        raise HostsFileError("--hosts", None, "empty value; expected a hosts file, node1,node2, localhost or slurm")
    if os.path.exists(arg):
        return parse_hosts_file(arg)
    if "," in arg:
        return parse_inline_hosts(arg)
    raise HostsFileError(
        arg, None, "hosts file not found (to list hosts inline, separate them with commas: node1,node2)"
    )
