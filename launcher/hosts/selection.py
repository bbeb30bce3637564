"""DeepSpeed-style ``--include`` / ``--exclude``: pick hosts, and GPUs on them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from launcher.errors import HostsFileError, UsageError
from launcher.hosts.files import MAX_SLOTS, Host, comparable_name, parse_number, shown

_GPU_LIST = re.compile(r"[0-9]+(?:,[0-9]+)*")
_COUNT = re.compile(r"[0-9]+")


def select_hosts(hosts: Sequence[Host], include: str | None, exclude: str | None) -> tuple[Host, ...]:
    """Apply DeepSpeed-style ``--include`` / ``--exclude`` (``node1@node2:0,1``).

    Entries are host names (a name given with several users or ports picks each of
    them). ``host:0,1`` keeps (include) or drops (exclude) only those GPUs on that host.
    As in DeepSpeed, GPU lists are merged, deduplicated and sorted: ``node1:1@node1:0,1``
    is ``node1:0,1``. The result keeps the order of ``hosts``, since the first host runs rank 0.
    """
    if include is not None and exclude is not None:
        raise HostsFileError("--include", None, "cannot be used together with --exclude; use one or the other")
    if include is not None:
        source = "--include"
        kept = _parse_selection(include, hosts, source)
        selected = [_with_gpus(hosts[index], gpus) for index, gpus in sorted(kept.items())]
    elif exclude is not None:
        source = "--exclude"
        dropped = _parse_selection(exclude, hosts, source)
        selected = []
        for index, host in enumerate(hosts):
            if index not in dropped:
                selected.append(host)
            elif (dropped_gpus := dropped[index]) is not None:
                remaining = tuple(gpu for gpu in _known_gpus(host, source) if gpu not in dropped_gpus)
                if remaining:
                    selected.append(_with_gpus(host, remaining))
    else:
        return tuple(hosts)
    if not selected:
        raise HostsFileError(source, None, "no hosts left to run on")
    return tuple(selected)


def check_nproc_for_gpus(hosts: Sequence[Host], nproc_per_node: str | None) -> None:
    """Refuse a numeric ``--nproc-per-node`` above the GPUs that ``--include``/``--exclude`` left on a host.

    Each process of a host gets one of its ``CUDA_VISIBLE_DEVICES``, so more processes than
    GPUs would share or miss devices. DeepSpeed refuses ``--num_gpus`` with any filter at
    all; a number that fits is well defined, so only one that does not is refused here.
    ``gpu``/``auto`` and None are left alone: they count the GPUs the host is given.
    """
    if nproc_per_node is None or not _COUNT.fullmatch(nproc_per_node):
        return
    asked = int(nproc_per_node)
    for host in hosts:
        if host.gpus is not None and asked > len(host.gpus):
            picked = ",".join(map(str, host.gpus))
            count = len(host.gpus)
            raise UsageError(
                f"--nproc-per-node {asked} is more than the {count} GPU{'s' if count != 1 else ''} picked on"
                f" {host.label} ({picked}); pass --nproc-per-node {count} or fewer, or pick more GPUs"
            )


def _parse_selection(text: str, hosts: Sequence[Host], source: str) -> dict[int, tuple[int, ...] | None]:
    """Map each chosen host's index to its GPU list (None: the whole host)."""
    chosen: dict[int, tuple[int, ...] | None] = {}
    for raw_entry in text.split("@"):
        entry = raw_entry.strip()
        if not entry:
            raise HostsFileError(source, None, f"empty entry in {shown(text)}; expected host1@host2:0,1")
        matches, gpus = _matching_hosts(entry, hosts), None
        # Try the whole entry first: "[fe80::1]:22" and "fe80::1" end in ":digits" too.
        if not matches and ":" in entry:
            head, _, tail = entry.rpartition(":")
            if _GPU_LIST.fullmatch(tail):
                matches, gpus = _matching_hosts(head, hosts), _parse_gpu_list(tail, source)
            elif tail.startswith(("MIG-", "GPU-")) and _matching_hosts(head, hosts):
                raise HostsFileError(
                    source,
                    None,
                    f"{shown(entry)} names a GPU by UUID, but GPUs are picked by index ({head}:0,1); to run on"
                    f" {tail}, set CUDA_VISIBLE_DEVICES={tail} in {head}'s own environment",
                )
        if not matches:
            raise HostsFileError(source, None, _unknown_host_message(entry, hosts))
        for index in matches:
            # With no known GPU count, an include can still pick GPUs; it just cannot check them.
            available = _available_gpus(hosts[index])
            if gpus is not None and available is not None:
                missing = [gpu for gpu in gpus if gpu not in available]
                if missing:
                    raise HostsFileError(
                        source,
                        None,
                        f"GPU {missing[0]} is not on {hosts[index].label}, which has GPUs {_describe_gpus(available)}",
                    )
            chosen[index] = _merge_gpu_lists(chosen[index], gpus, hosts[index], source) if index in chosen else gpus
    return chosen


def _matching_hosts(entry: str, hosts: Sequence[Host]) -> list[int]:
    # By name only: '@' separates entries, so user@host cannot be written here.
    if entry.startswith("[") and entry.endswith("]"):
        entry = entry[1:-1]
    wanted = comparable_name(entry)
    return [index for index, host in enumerate(hosts) if wanted == comparable_name(host.name)]


def _parse_gpu_list(text: str, source: str) -> tuple[int, ...]:
    # Sorted and without repeats, as DeepSpeed's parse_node_config_list: local rank N gets
    # the Nth GPU listed, so "2,0" and "0,2" must not mean two different placements.
    return tuple(sorted({parse_number(part, "GPU index", 0, MAX_SLOTS - 1, source, None) for part in text.split(",")}))


def _merge_gpu_lists(
    earlier: tuple[int, ...] | None, later: tuple[int, ...] | None, host: Host, source: str
) -> tuple[int, ...]:
    if earlier is None and later is None:
        raise HostsFileError(source, None, f"{host.label} is named twice")
    if earlier is None or later is None:
        # DeepSpeed quietly narrows "node1@node1:0" to GPU 0; whether the whole host was meant
        # cannot be told, so it is refused rather than guessed.
        raise HostsFileError(source, None, f"{host.label} is named both whole and with GPUs; name it once")
    return tuple(sorted({*earlier, *later}))


def _with_gpus(host: Host, gpus: tuple[int, ...] | None) -> Host:
    return host if gpus is None else replace(host, slots=len(gpus), gpus=gpus)


def _available_gpus(host: Host) -> tuple[int, ...] | None:
    if host.gpus is not None:
        return host.gpus
    return None if host.slots is None else tuple(range(host.slots))


def _known_gpus(host: Host, source: str) -> tuple[int, ...]:
    available = _available_gpus(host)
    if available is None:
        raise HostsFileError(
            source,
            None,
            f"cannot exclude GPUs on {host.label}: its GPU count is unknown (give it slots=N in the hosts file)",
        )
    return available


def _describe_gpus(gpus: tuple[int, ...]) -> str:
    if gpus == tuple(range(len(gpus))) and len(gpus) > 2:
        return f"0-{len(gpus) - 1}"
    return ",".join(map(str, gpus))


def _unknown_host_message(entry: str, hosts: Sequence[Host]) -> str:
    names = list(dict.fromkeys(host.name for host in hosts))
    known = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    hint = "; separate hosts with '@', not ','" if "," in entry and ":" not in entry else ""
    return f"unknown host {shown(entry)} (the hosts are: {known}){hint}"
