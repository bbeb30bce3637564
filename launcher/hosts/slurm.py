"""SLURM allocations: ``--hosts slurm`` expands ``SLURM_JOB_NODELIST`` itself, no scontrol."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping

from launcher.errors import HostsFileError
from launcher.hosts.files import Host, check_name, parse_slots, shown

_MAX_SLURM_HOSTS = 65536
_DIGITS = re.compile(r"[0-9]+")
_SLURM_COUNT = re.compile(r"([0-9]+)(?:\(x[0-9]+\))?(?:,.*)?")
_SLURM_REPEAT = re.compile(r"([0-9]+)(?:\(x([0-9]{1,6})\))?")


def expand_slurm_nodelist(nodelist: str) -> tuple[str, ...]:
    """Expand a SLURM compressed node list (``node[01-04,07],gpu-a``) without scontrol.

    Zero padding is kept; several bracket groups in one name expand as a cartesian
    product, the first group varying slowest, as SLURM does.
    """
    source = "SLURM_JOB_NODELIST"
    text = nodelist.strip()
    if not text:
        raise HostsFileError(source, None, "empty node list")
    names: list[str] = []
    for entry in _split_outside_brackets(text, source):
        choices = _slurm_entry_choices(entry, source)
        if len(names) + math.prod(len(options) for options in choices) > _MAX_SLURM_HOSTS:
            raise HostsFileError(source, None, f"node list expands to more than {_MAX_SLURM_HOSTS} hosts")
        names.extend("".join(parts) for parts in itertools.product(*choices))
    seen: set[str] = set()
    for name in names:
        check_name(name, "node name", source, None)
        if name in seen:
            raise HostsFileError(source, None, f"node {name} is listed twice")
        seen.add(name)
    return tuple(names)


def slurm_hosts(environ: Mapping[str, str]) -> tuple[Host, ...]:
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise HostsFileError("--hosts slurm", None, "SLURM_JOB_NODELIST is not set (not inside a SLURM allocation)")
    names = expand_slurm_nodelist(nodelist)
    slots = slurm_slots(environ)
    if slots is not None:
        return tuple(Host(name, slots=slots) for name in names)
    cpus = slurm_cpus_per_node(environ, len(names))
    return tuple(Host(name, slots=count) for name, count in zip(names, cpus, strict=True))


def slurm_cpus_per_node(environ: Mapping[str, str], nodes: int) -> list[int | None]:
    """Each node's CPUs from ``SLURM_JOB_CPUS_PER_NODE`` (``4(x2),8``: 4, 4, 8), in node list order."""
    value = environ.get("SLURM_JOB_CPUS_PER_NODE", "").strip()
    if not value:
        return [None] * nodes
    counts: list[int | None] = []
    for part in value.split(","):
        match = _SLURM_REPEAT.fullmatch(part.strip())
        if match is None:
            raise HostsFileError(
                "SLURM_JOB_CPUS_PER_NODE", None, f"expected counts such as 4(x2),8, got {shown(value)}"
            )
        count = parse_slots(match[1], "SLURM_JOB_CPUS_PER_NODE", None, "CPUs per node")
        counts.extend([count] * int(match[2] or 1))
    if len(counts) != nodes:
        raise HostsFileError(
            "SLURM_JOB_CPUS_PER_NODE", None, f"{shown(value)} gives {len(counts)} node(s), not {nodes}"
        )
    return counts


def slurm_slots(environ: Mapping[str, str]) -> int | None:
    """Processes per node when the allocation says: its GPUs, else the tasks per node asked for."""
    for variable in ("SLURM_GPUS_ON_NODE", "SLURM_NTASKS_PER_NODE"):
        value = environ.get(variable, "").strip()
        if not value:
            continue
        match = _SLURM_COUNT.fullmatch(value)
        if match is None:
            raise HostsFileError(variable, None, f"expected a count such as 4 or 4(x2), got {shown(value)}")
        if match[1].strip("0") == "":
            continue  # an allocation without GPUs reports 0: fall back to tasks per node
        return parse_slots(match[1], variable, None, "slots per node")
    return None


def _split_outside_brackets(text: str, source: str) -> list[str]:
    entries: list[str] = []
    start = 0
    inside = False
    for position, character in enumerate(text):
        if character == "[":
            if inside:
                raise HostsFileError(source, None, f"nested '[' in {shown(text)}")
            inside = True
        elif character == "]":
            if not inside:
                raise HostsFileError(source, None, f"']' without '[' in {shown(text)}")
            inside = False
        elif character == "," and not inside:
            entries.append(text[start:position])
            start = position + 1
    if inside:
        raise HostsFileError(source, None, f"unclosed '[' in {shown(text)}")
    entries.append(text[start:])
    if "" in entries:
        raise HostsFileError(source, None, f"empty entry in {shown(text)}; expected names separated by single commas")
    return entries


def _slurm_entry_choices(entry: str, source: str) -> list[list[str]]:
    """``rack[1-2]-n[1-2]`` -> ``[["rack"], ["1", "2"], ["-n"], ["1", "2"]]``."""
    choices: list[list[str]] = []
    for piece in re.split(r"(\[[^\]]*\])", entry):
        if not piece.startswith("["):
            if piece:
                choices.append([piece])
            continue
        numbers: list[str] = []
        for part in piece[1:-1].split(","):
            low, dash, high = part.partition("-")
            if not _DIGITS.fullmatch(low) or (dash and not _DIGITS.fullmatch(high)) or len(part) > 40:
                raise HostsFileError(
                    source, None, f"bad range {shown(part)} in {shown(entry)}; expected N or N-M inside [...]"
                )
            first, last = int(low), int(high) if dash else int(low)
            if last < first:
                raise HostsFileError(source, None, f"range {part} in {shown(entry)} goes backwards")
            if len(numbers) + last - first >= _MAX_SLURM_HOSTS:
                raise HostsFileError(source, None, f"node list expands to more than {_MAX_SLURM_HOSTS} hosts")
            # The width of the low end is the padding: [08-10] gives 08 09 10, [8-10] 8 9 10.
            numbers.extend(str(number).zfill(len(low)) for number in range(first, last + 1))
        choices.append(numbers)
    return choices
