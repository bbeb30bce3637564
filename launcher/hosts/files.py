"""Hosts files and inline host lists -> ``tuple[Host, ...]`` (which source: ``sources.py``).

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
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace

from launcher.errors import HostsFileError

__all__ = [
    "LOCALHOST",
    "MAX_SLOTS",
    "Host",
    "parse_host_spec",
    "parse_hosts_file",
    "parse_hosts_text",
    "parse_inline_hosts",
]

MAX_SLOTS = 1024
"""Most processes one host may run. Generous for real nodes, but low enough that an SSH port
written as ``host:2222`` (which means 2222 processes) is caught instead of obeyed."""

_MAX_NAME_LENGTH = 255
_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")
_IPV6_CHARACTERS = frozenset(string.hexdigits + ":.")
_DIGITS = re.compile(r"[0-9]+")
_SPACES = re.compile(r"[ \t]+")
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
            source, line, f"spaces are not allowed in a host, got {shown(text)}; expected {_SPEC_FORMS}"
        )
    user: str | None = None
    address = text
    if "@" in text:
        user, _, address = text.partition("@")
        if "@" in address:
            raise HostsFileError(source, line, f"more than one '@' in {shown(text)}; expected user@host")
        check_name(user, "user name", source, line)
    if address.startswith("["):
        name, port = _parse_bracketed(address, source, line)
        return Host(name, user=user, port=port)
    if "[" in address or "]" in address:
        raise HostsFileError(
            source,
            line,
            f"malformed brackets in {shown(text)}; expected [address]:PORT "
            "(SLURM ranges like node[1-4] are expanded only for --hosts slurm)",
        )
    if address.count(":") >= 2:
        return Host(_check_ipv6(address, source, line), user=user)
    if ":" not in address:
        return Host(check_name(address, "host name", source, line), user=user)
    name, _, number = address.partition(":")
    check_name(name, "host name", source, line)
    if user is not None:
        return Host(name, user=user, port=_parse_port(number, source, line))
    hint = f" (for an SSH port write [{name}]:PORT or user@{name}:PORT)"
    return Host(name, slots=parse_slots(number, source, line, f"slots after '{name}:'", hint))


def _parse_hosts_line(content: str, source: str, line: int) -> Host:
    spec, *settings = _SPACES.split(content)
    if "=" in spec:
        raise HostsFileError(
            source, line, f"expected a host before {shown(spec)}; a line is: host [slots=N] [port=N] [user=NAME]"
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
                f"expected key=value after the host, got {shown(setting)} (one host per line; write slots=N without spaces)",
            )
        if key == "max_slots":
            # Open MPI's hard cap; it only matters to mpirun's oversubscription logic.
            parse_slots(value, source, line, "max_slots")
            continue
        updated = _apply_setting(host, key, value, source, line)
        earlier = getattr(host, key)
        if earlier is not None and earlier != getattr(updated, key):
            raise HostsFileError(source, line, f"conflicting {key}: {shown(origins[key])} and {shown(setting)}")
        host = updated
        origins[key] = setting
    return host


def _apply_setting(host: Host, key: str, value: str, source: str, line: int) -> Host:
    if key == "slots":
        return replace(host, slots=parse_slots(value, source, line, "slots"))
    if key == "port":
        return replace(host, port=_parse_port(value, source, line))
    if key == "user":
        return replace(host, user=check_name(value, "user name", source, line))
    raise HostsFileError(source, line, f"unknown key {shown(key)} (known: {', '.join(_SETTING_KEYS)})")


def _parse_bracketed(address: str, source: str, line: int | None) -> tuple[str, int | None]:
    close = address.find("]")
    if close == -1:
        raise HostsFileError(
            source, line, f"malformed brackets in {shown(address)}: no closing ']'; expected [address]:PORT"
        )
    inner, after = address[1:close], address[close + 1 :]
    if not inner:
        raise HostsFileError(
            source, line, f"malformed brackets in {shown(address)}: nothing inside; expected [address]:PORT"
        )
    if after and not after.startswith(":"):
        raise HostsFileError(
            source, line, f"malformed brackets in {shown(address)}: {shown(after)} after ']'; expected [address]:PORT"
        )
    name = _check_ipv6(inner, source, line) if ":" in inner else check_name(inner, "host name", source, line)
    return name, _parse_port(after[1:], source, line) if after else None


def parse_inline_hosts(arg: str) -> tuple[Host, ...]:
    # Empty items are skipped so that a trailing comma ("node1,") names one host.
    hosts: list[tuple[Host, int | None]] = [(parse_host_spec(item), None) for item in arg.split(",") if item.strip()]
    if not hosts:
        raise HostsFileError("--hosts", None, f"no hosts in {shown(arg)}; expected node1,node2")
    return _reject_duplicates(hosts, "--hosts")


def _reject_duplicates(hosts: Sequence[tuple[Host, int | None]], source: str) -> tuple[Host, ...]:
    first_lines: dict[tuple[str, str | None, int | None], int | None] = {}
    for host, line in hosts:
        identity = (comparable_name(host.name), host.user, host.port)
        if identity in first_lines:
            first = first_lines[identity]
            where = "" if first is None else f" (first on line {first})"
            raise HostsFileError(source, line, f"{host.label} is listed twice{where}")
        first_lines[identity] = line
    return tuple(host for host, _ in hosts)


def comparable_name(name: str) -> str:
    # ssh lowercases host names before matching ssh config, and DNS ignores case, so
    # NODE1 and node1 are one machine; fe80::1 and fe80:0::1 are one address.
    if ":" in name:
        try:
            return str(ipaddress.IPv6Address(name))
        except ValueError:
            pass
    return name.lower()


def parse_slots(text: str, source: str, line: int | None, what: str, hint: str = "") -> int:
    return parse_number(text, what, 1, MAX_SLOTS, source, line, hint)


def _parse_port(text: str, source: str, line: int | None) -> int:
    return parse_number(text, "port", 1, 65535, source, line)


def parse_number(text: str, what: str, lowest: int, highest: int, source: str, line: int | None, hint: str = "") -> int:
    # Only ASCII digits: int() would also take "+4", " 4", "1_000" and Arabic-Indic digits.
    if _DIGITS.fullmatch(text):
        digits = text.lstrip("0") or "0"
        if len(digits) <= len(str(highest)) and lowest <= int(digits) <= highest:
            return int(digits)
    raise HostsFileError(
        source, line, f"{what} must be a whole number from {lowest} to {highest}, got {shown(text)}{hint}"
    )


def check_name(name: str, what: str, source: str, line: int | None) -> str:
    """Accept only characters that are inert in a shell and in ssh's argument parsing."""
    if not name:
        raise HostsFileError(source, line, f"empty {what}")
    if len(name) > _MAX_NAME_LENGTH:
        raise HostsFileError(source, line, f"{what} {shown(name)} is too long (at most {_MAX_NAME_LENGTH} characters)")
    for character in name:
        if character not in _NAME_CHARACTERS:
            raise HostsFileError(
                source,
                line,
                f"{shown(character)} is not allowed in {what} {shown(name)}; expected letters, digits, '.', '-' and '_'",
            )
    if name.startswith("-"):
        raise HostsFileError(
            source, line, f"{what} {shown(name)} must not start with '-' (ssh would read it as an option)"
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
            f"{shown(text)} is not a valid IPv6 address (write host:SLOTS for slots, [address]:PORT for a port)",
        )
    return text


def shown(text: str) -> str:
    """Quote a user's text for a message, shortened so the message stays one readable line."""
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}..."
