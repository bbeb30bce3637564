"""Hosts files, inline host lists and SLURM node lists -> ``tuple[Host, ...]``.

Pure: nothing here touches the network, and the only I/O is reading the hosts file.
Every input either parses or raises one ``HostsFileError`` naming the file and line.

A hosts file holds one host per line; ``#`` starts a comment::

    node1                       # a hostname, IPv4 address or ssh-config alias
    node2 slots=4               # DeepSpeed / MPI hostfile (MPI's max_slots=N is ignored)
    node3:4                     # horovod: 4 processes
    alice@node4:2222            # with a user, the number after ':' is the SSH port
    [fe80::1]:2222              # brackets: the number after ']:' is the SSH port
    fe80::2                     # a bare IPv6 address is just a name
    node5 user=bob port=2222 slots=8

Inline lists (``--hosts node1,node2:4,bob@node3``) use the same spec, one per comma.
Names are restricted to characters that are never special to a shell or to ssh's
option parser, so a hosts file cannot smuggle a command into a remote command line.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from launcher.errors import HostsFileError

__all__ = [
    "LOCALHOST",
    "MAX_SLOTS",
    "Host",
    "expand_slurm_nodelist",
    "parse_host_spec",
    "parse_hosts_file",
    "parse_hosts_text",
    "resolve_hosts",
    "select_hosts",
]

MAX_SLOTS = 1024
"""Most processes one host may run. Generous for real nodes, but low enough that an SSH port
written as ``host:2222`` (which means 2222 processes) is caught instead of obeyed."""

_MAX_SLURM_HOSTS = 65536
_MAX_NAME_LENGTH = 255
_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")
_IPV6_CHARACTERS = frozenset(string.hexdigits + ":.")
_DIGITS = re.compile(r"[0-9]+")
_SPACES = re.compile(r"[ \t]+")
_GPU_LIST = re.compile(r"[0-9]+(?:,[0-9]+)*")
_SLURM_COUNT = re.compile(r"([0-9]+)(?:\(x[0-9]+\))?(?:,.*)?")
_SETTING_KEYS = ("slots", "port", "user")
_SPEC_FORMS = "host, host:SLOTS, user@host, user@host:PORT or [address]:PORT"


@dataclass(frozen=True)
class Host:
    """One machine to run on, as the user wrote it."""

    name: str
    """Hostname, IP address (IPv6 without brackets) or ssh-config alias, as written."""

    user: str | None = None
    """SSH login name; None lets ssh decide (ssh config, then the local user name)."""

    port: int | None = None
    """SSH port; None lets ssh decide (ssh config, then 22)."""

    slots: int | None = None
    """Processes to start on this host; None means ``--nproc-per-node``."""

    gpus: tuple[int, ...] | None = None
    """Only these GPU indices (``--include host:0,1``); None means every GPU.
    When given without ``slots``, slots becomes ``len(gpus)``."""

    def __post_init__(self) -> None:
        if self.gpus is not None and self.slots is None:
            # A frozen dataclass has no other way to fill a derived default.
            object.__setattr__(self, "slots", len(self.gpus))

    @property
    def is_local(self) -> bool:
        """Runs on this machine without SSH: plain ``localhost``, no user and no port."""
        return self.name == "localhost" and self.user is None and self.port is None

    @property
    def label(self) -> str:
        """How the host is shown to users; it parses back to the same name, user and port."""
        if self.port is None:
            address = self.name
        elif self.user is not None and ":" not in self.name:
            address = f"{self.name}:{self.port}"
        else:
            # Without a user, ``name:N`` reads back as N slots; brackets always mean a port.
            address = f"[{self.name}]:{self.port}"
        return address if self.user is None else f"{self.user}@{address}"

    def __str__(self) -> str:
        return self.label


LOCALHOST = Host("localhost")


def parse_hosts_file(path: str | os.PathLike[str]) -> tuple[Host, ...]:
    """Read and parse a hosts file; every failure is a ``HostsFileError`` naming the file."""
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError as error:
        raise HostsFileError(source, None, "hosts file not found") from error
    except IsADirectoryError as error:
        raise HostsFileError(source, None, "is a directory, expected a hosts file") from error
    except PermissionError as error:
        raise HostsFileError(source, None, "cannot read hosts file: permission denied") from error
    except OSError as error:
        raise HostsFileError(source, None, f"cannot read hosts file: {error.strerror or error}") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start]
        raise HostsFileError(
            source, line, f"not UTF-8 text (byte 0x{byte:02x}); save the hosts file as UTF-8"
        ) from error
    return parse_hosts_text(text, source)


def parse_hosts_text(text: str, source: str) -> tuple[Host, ...]:
    """Parse the contents of a hosts file; ``source`` names it in error messages."""
    numbered_hosts: list[tuple[Host, int | None]] = []
    # Split on "\n" only: str.splitlines() also breaks on form feeds, \x1c-\x1e and
    # \u2028, which would make our line numbers disagree with the user's editor.
    for number, raw_line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        content = raw_line.removesuffix("\r").partition("#")[0].strip()
        if content:
            numbered_hosts.append((_parse_hosts_line(content, source, number), number))
    if not numbered_hosts:
        raise HostsFileError(source, None, "no hosts in file")
    return _reject_duplicates(numbered_hosts, source)


def parse_host_spec(spec: str, source: str = "--hosts", line: int | None = None) -> Host:
    """Parse one host as written in a hosts file's first column or an inline list item.

    ``host:N`` is N slots, but ``user@host:N`` and ``[host]:N`` are SSH port N.
    """
    text = spec.strip()
    if not text:
        raise HostsFileError(source, line, f"empty host; expected {_SPEC_FORMS}")
    if any(character.isspace() for character in text):
        raise HostsFileError(
            source, line, f"spaces are not allowed in a host, got {_show(text)}; expected {_SPEC_FORMS}"
        )
    user: str | None = None
    address = text
    if "@" in text:
        user, _, address = text.partition("@")
        if "@" in address:
            raise HostsFileError(source, line, f"more than one '@' in {_show(text)}; expected user@host")
        _check_name(user, "user name", source, line)
    if address.startswith("["):
        name, port = _parse_bracketed(address, source, line)
        return Host(name, user=user, port=port)
    if "[" in address or "]" in address:
        raise HostsFileError(
            source,
            line,
            f"malformed brackets in {_show(text)}; expected [address]:PORT "
            "(SLURM ranges like node[1-4] are expanded only for --hosts slurm)",
        )
    if address.count(":") >= 2:
        return Host(_check_ipv6(address, source, line), user=user)
    if ":" not in address:
        return Host(_check_name(address, "host name", source, line), user=user)
    name, _, number = address.partition(":")
    _check_name(name, "host name", source, line)
    if user is not None:
        return Host(name, user=user, port=_parse_port(number, source, line))
    hint = f" (for an SSH port write [{name}]:PORT or user@{name}:PORT)"
    return Host(name, slots=_parse_slots(number, source, line, f"slots after '{name}:'", hint))


def resolve_hosts(arg: str | None, environ: Mapping[str, str] | None = None) -> tuple[Host, ...]:
    """Turn the ``--hosts`` value into hosts.

    None or ``localhost``: this machine. ``slurm``: the current SLURM allocation. A path
    that exists: a hosts file. Anything with a comma: an inline list.
    """
    if arg is None or arg == "localhost":
        return (LOCALHOST,)
    if arg == "slurm":
        return _slurm_hosts(os.environ if environ is None else environ)
    if not arg.strip():
        raise HostsFileError("--hosts", None, "empty value; expected a hosts file, node1,node2, localhost or slurm")
    if os.path.exists(arg):
        return parse_hosts_file(arg)
    if "," in arg:
        return _parse_inline_hosts(arg)
    raise HostsFileError(
        arg, None, "hosts file not found (to list hosts inline, separate them with commas: node1,node2)"
    )


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
        _check_name(name, "node name", source, None)
        if name in seen:
            raise HostsFileError(source, None, f"node {name} is listed twice")
        seen.add(name)
    return tuple(names)


def select_hosts(hosts: Sequence[Host], include: str | None, exclude: str | None) -> tuple[Host, ...]:
    """Apply DeepSpeed-style ``--include`` / ``--exclude`` (``node1@node2:0,1``).

    Entries are host names (a name given with several users or ports picks each of
    them). ``host:0,1`` keeps (include) or drops (exclude) only those GPUs on that host.
    The result keeps the order of ``hosts``, since the first host runs rank 0.
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


def _parse_hosts_line(content: str, source: str, line: int) -> Host:
    spec, *settings = _SPACES.split(content)
    if "=" in spec:
        raise HostsFileError(
            source, line, f"expected a host before {_show(spec)}; a line is: host [slots=N] [port=N] [user=NAME]"
        )
    host = parse_host_spec(spec, source, line)
    # Where each field was last set, to name both places when two of them disagree.
    origins = {field: spec for field in _SETTING_KEYS if getattr(host, field) is not None}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise HostsFileError(
                source,
                line,
                f"expected key=value after the host, got {_show(setting)} (one host per line; write slots=N without spaces)",
            )
        if key == "max_slots":
            # Open MPI's hard cap; it only matters to mpirun's oversubscription logic.
            _parse_slots(value, source, line, "max_slots")
            continue
        updated = _apply_setting(host, key, value, source, line)
        earlier = getattr(host, key)
        if earlier is not None and earlier != getattr(updated, key):
            raise HostsFileError(source, line, f"conflicting {key}: {_show(origins[key])} and {_show(setting)}")
        host = updated
        origins[key] = setting
    return host


def _apply_setting(host: Host, key: str, value: str, source: str, line: int) -> Host:
    if key == "slots":
        return replace(host, slots=_parse_slots(value, source, line, "slots"))
    if key == "port":
        return replace(host, port=_parse_port(value, source, line))
    if key == "user":
        return replace(host, user=_check_name(value, "user name", source, line))
    raise HostsFileError(source, line, f"unknown key {_show(key)} (known: {', '.join(_SETTING_KEYS)})")


def _parse_bracketed(address: str, source: str, line: int | None) -> tuple[str, int | None]:
    close = address.find("]")
    if close == -1:
        raise HostsFileError(
            source, line, f"malformed brackets in {_show(address)}: no closing ']'; expected [address]:PORT"
        )
    inner, after = address[1:close], address[close + 1 :]
    if not inner:
        raise HostsFileError(
            source, line, f"malformed brackets in {_show(address)}: nothing inside; expected [address]:PORT"
        )
    if after and not after.startswith(":"):
        raise HostsFileError(
            source, line, f"malformed brackets in {_show(address)}: {_show(after)} after ']'; expected [address]:PORT"
        )
    name = _check_ipv6(inner, source, line) if ":" in inner else _check_name(inner, "host name", source, line)
    return name, _parse_port(after[1:], source, line) if after else None


def _parse_inline_hosts(arg: str) -> tuple[Host, ...]:
    # Empty items are skipped so that a trailing comma ("node1,") names one host.
    hosts: list[tuple[Host, int | None]] = [(parse_host_spec(item), None) for item in arg.split(",") if item.strip()]
    if not hosts:
        raise HostsFileError("--hosts", None, f"no hosts in {_show(arg)}; expected node1,node2")
    return _reject_duplicates(hosts, "--hosts")


def _reject_duplicates(hosts: Sequence[tuple[Host, int | None]], source: str) -> tuple[Host, ...]:
    first_lines: dict[tuple[str, str | None, int | None], int | None] = {}
    for host, line in hosts:
        identity = (_comparable_name(host.name), host.user, host.port)
        if identity in first_lines:
            first = first_lines[identity]
            where = "" if first is None else f" (first on line {first})"
            raise HostsFileError(source, line, f"{host.label} is listed twice{where}")
        first_lines[identity] = line
    return tuple(host for host, _ in hosts)


def _comparable_name(name: str) -> str:
    # ssh lowercases host names before matching ssh config, and DNS ignores case, so
    # NODE1 and node1 are one machine; fe80::1 and fe80:0::1 are one address.
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            pass
    return name.lower()


def _slurm_hosts(environ: Mapping[str, str]) -> tuple[Host, ...]:
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise HostsFileError("--hosts slurm", None, "SLURM_JOB_NODELIST is not set (not inside a SLURM allocation)")
    slots = _slurm_slots(environ)
    return tuple(Host(name, slots=slots) for name in expand_slurm_nodelist(nodelist))


def _slurm_slots(environ: Mapping[str, str]) -> int | None:
    for variable in ("SLURM_GPUS_ON_NODE", "SLURM_NTASKS_PER_NODE"):
        value = environ.get(variable, "").strip()
        if not value:
            continue
        match = _SLURM_COUNT.fullmatch(value)
        if match is None:
            raise HostsFileError(variable, None, f"expected a count such as 4 or 4(x2), got {_show(value)}")
        if match[1].strip("0") == "":
            continue  # an allocation without GPUs reports 0: fall back to tasks per node
        return _parse_slots(match[1], variable, None, "slots per node")
    return None


def _split_outside_brackets(text: str, source: str) -> list[str]:
    entries: list[str] = []
    start = 0
    inside = False
    for position, character in enumerate(text):
        if character == "[":
            if inside:
                raise HostsFileError(source, None, f"nested '[' in {_show(text)}")
            inside = True
        elif character == "]":
            if not inside:
                raise HostsFileError(source, None, f"']' without '[' in {_show(text)}")
            inside = False
        elif character == "," and not inside:
            entries.append(text[start:position])
            start = position + 1
    if inside:
        raise HostsFileError(source, None, f"unclosed '[' in {_show(text)}")
    entries.append(text[start:])
    if "" in entries:
        raise HostsFileError(source, None, f"empty entry in {_show(text)}; expected names separated by single commas")
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
                    source, None, f"bad range {_show(part)} in {_show(entry)}; expected N or N-M inside [...]"
                )
            first, last = int(low), int(high) if dash else int(low)
            if last < first:
                raise HostsFileError(source, None, f"range {part} in {_show(entry)} goes backwards")
            if len(numbers) + last - first >= _MAX_SLURM_HOSTS:
                raise HostsFileError(source, None, f"node list expands to more than {_MAX_SLURM_HOSTS} hosts")
            # The width of the low end is the padding: [08-10] gives 08 09 10, [8-10] 8 9 10.
            numbers.extend(str(number).zfill(len(low)) for number in range(first, last + 1))
        choices.append(numbers)
    return choices


def _parse_selection(text: str, hosts: Sequence[Host], source: str) -> dict[int, tuple[int, ...] | None]:
    """Map each chosen host's index to its GPU list (None: the whole host)."""
    chosen: dict[int, tuple[int, ...] | None] = {}
    for raw_entry in text.split("@"):
        entry = raw_entry.strip()
        if not entry:
            raise HostsFileError(source, None, f"empty entry in {_show(text)}; expected host1@host2:0,1")
        matches, gpus = _matching_hosts(entry, hosts), None
        # Try the whole entry first: "[fe80::1]:22" and "fe80::1" end in ":digits" too.
        if not matches and ":" in entry:
            head, _, tail = entry.rpartition(":")
            if _GPU_LIST.fullmatch(tail):
                matches, gpus = _matching_hosts(head, hosts), _parse_gpu_list(tail, source)
        if not matches:
            raise HostsFileError(source, None, _unknown_host_message(entry, hosts))
        for index in matches:
            if index in chosen:
                raise HostsFileError(source, None, f"{hosts[index].label} is named twice")
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
            chosen[index] = gpus
    return chosen


def _matching_hosts(entry: str, hosts: Sequence[Host]) -> list[int]:
    # By name only: '@' separates entries, so user@host cannot be written here.
    if entry.startswith("[") and entry.endswith("]"):
        entry = entry[1:-1]
    wanted = _comparable_name(entry)
    return [index for index, host in enumerate(hosts) if wanted == _comparable_name(host.name)]


def _parse_gpu_list(text: str, source: str) -> tuple[int, ...]:
    gpus = tuple(_parse_number(part, "GPU index", 0, MAX_SLOTS - 1, source, None) for part in text.split(","))
    if len(set(gpus)) != len(gpus):
        raise HostsFileError(source, None, f"a GPU is listed twice in {_show(text)}")
    return gpus


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
    return f"unknown host {_show(entry)} (the hosts are: {known}){hint}"


def _parse_slots(text: str, source: str, line: int | None, what: str, hint: str = "") -> int:
    return _parse_number(text, what, 1, MAX_SLOTS, source, line, hint)


def _parse_port(text: str, source: str, line: int | None) -> int:
    return _parse_number(text, "port", 1, 65535, source, line)


def _parse_number(
    text: str, what: str, lowest: int, highest: int, source: str, line: int | None, hint: str = ""
) -> int:
    # Only ASCII digits: int() would also take "+4", " 4", "1_000" and Arabic-Indic digits.
    if _DIGITS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        if len(digits) <= len(str(highest)) and lowest <= int(digits) <= highest:
            return int(digits)
    raise HostsFileError(
        source, line, f"{what} must be a whole number from {lowest} to {highest}, got {_show(text)}{hint}"
    )


def _check_name(name: str, what: str, source: str, line: int | None) -> str:
    """Accept only characters that are inert in a shell and in ssh's argument parsing."""
    if not name:
        raise HostsFileError(source, line, f"empty {what}")
    if len(name) > _MAX_NAME_LENGTH:
        raise HostsFileError(source, line, f"{what} {_show(name)} is too long (at most {_MAX_NAME_LENGTH} characters)")
    for character in name:
        if character not in _NAME_CHARACTERS:
            raise HostsFileError(
                source,
                line,
                f"{_show(character)} is not allowed in {what} {_show(name)}; expected letters, digits, '.', '-' and '_'",
            )
    if name.startswith("-"):
        raise HostsFileError(
            source, line, f"{what} {_show(name)} must not start with '-' (ssh would read it as an option)"
        )
    return name


def _check_ipv6(text: str, source: str, line: int | None) -> str:
    address, percent, zone = text.partition("%")
    valid = (
        len(text) <= _MAX_NAME_LENGTH
        and all(character in _IPV6_CHARACTERS for character in address)
        and (not percent or (zone != "" and all(character in _NAME_CHARACTERS for character in zone)))
    )
    if valid:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            valid = False
    if not valid:
        raise HostsFileError(
            source,
            line,
            f"{_show(text)} is not a valid IPv6 address (write host:SLOTS for slots, [address]:PORT for a port)",
        )
    return text


def _show(text: str) -> str:
    """Quote a user's text for a message, shortened so the message stays one readable line."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
