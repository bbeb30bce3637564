"""Hosts files, host specs, SLURM node lists and --include/--exclude."""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher.errors import HostsFileError
from launcher.hosts.files import (
    LOCALHOST,
    MAX_SLOTS,
    Host,
    parse_host_spec,
    parse_hosts_file,
    parse_hosts_text,
)
from launcher.hosts.selection import select_hosts
from launcher.hosts.slurm import expand_slurm_nodelist
from launcher.hosts.sources import resolve_hosts

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def error_of(call: Callable[..., object], *args: object) -> str:
    """The message of the HostsFileError that ``call(*args)`` raises."""
    with pytest.raises(HostsFileError) as caught:
        call(*args)
    return str(caught.value)


# --- one line of a hosts file -------------------------------------------------------------

VALID_LINES = [
    ("node1", Host("node1")),
    ("node-1.example.com", Host("node-1.example.com")),
    ("my_alias", Host("my_alias")),
    ("10.0.0.7", Host("10.0.0.7")),
    ("localhost", LOCALHOST),
    ("node1 slots=4", Host("node1", slots=4)),
    ("node1 slots=4 max_slots=8", Host("node1", slots=4)),
    ("node1 slots=004", Host("node1", slots=4)),
    (f"node1 slots={MAX_SLOTS}", Host("node1", slots=MAX_SLOTS)),
    ("node1:4", Host("node1", slots=4)),
    ("node1:4 slots=4", Host("node1", slots=4)),
    ("node1 slots=2 slots=2", Host("node1", slots=2)),
    ("alice@node1", Host("node1", user="alice")),
    ("alice@node1:2222", Host("node1", user="alice", port=2222)),
    ("alice@node1:2222 slots=8", Host("node1", user="alice", port=2222, slots=8)),
    ("alice@node1:1", Host("node1", user="alice", port=1)),
    ("alice@node1:65535", Host("node1", user="alice", port=65535)),
    ("[node1]:2222", Host("node1", port=2222)),
    ("[node1]", Host("node1")),
    ("[fe80::1]:2222", Host("fe80::1", port=2222)),
    ("[fe80::1]", Host("fe80::1")),
    ("alice@[fe80::1]:22", Host("fe80::1", user="alice", port=22)),
    ("fe80::1", Host("fe80::1")),
    ("::1", Host("::1")),
    ("2001:db8::8a2e:370:7334 slots=2", Host("2001:db8::8a2e:370:7334", slots=2)),
    ("::ffff:10.0.0.1", Host("::ffff:10.0.0.1")),
    ("fe80::1%eth0", Host("fe80::1%eth0")),
    ("alice@fe80::1", Host("fe80::1", user="alice")),
    ("node1 port=2222", Host("node1", port=2222)),
    ("node1 user=alice", Host("node1", user="alice")),
    ("node1 user=alice port=22 slots=8", Host("node1", user="alice", port=22, slots=8)),
    ("alice@node1 user=alice", Host("node1", user="alice")),
    ("alice@node1:22 port=22", Host("node1", user="alice", port=22)),
    ("  node1  ", Host("node1")),
    ("\tnode1\tslots=2\t", Host("node1", slots=2)),
    ("node1 slots=2 # four GPUs, two broken", Host("node1", slots=2)),
    ("node1#comment", Host("node1")),
    ("node1 slots=2\r", Host("node1", slots=2)),
    ("node1 # slots=oops gpus=1 $(rm -rf /)", Host("node1")),
]


@pytest.mark.parametrize(("line", "expected"), VALID_LINES, ids=[line for line, _ in VALID_LINES])
def test_hosts_file_line(line: str, expected: Host) -> None:
    assert parse_hosts_text(line, "hosts") == (expected,)


def test_whole_file_with_comments_blank_lines_and_crlf() -> None:
    text = (
        "\ufeff# cluster A\r\n"
        "\r\n"
        "node1 slots=8   # rank 0 lives here\r\n"
        "   \t  \r\n"
        "node2:8\r\n"
        "#node3\r\n"
        "alice@node4:2222 slots=8 # via bastion\r\n"
        "[fe80::1]:22\r\n"
        "# trailing comment without newline"
    )
    assert parse_hosts_text(text, "hosts") == (
        Host("node1", slots=8),
        Host("node2", slots=8),
        Host("node4", user="alice", port=2222, slots=8),
        Host("fe80::1", port=22),
    )


def test_same_name_with_different_user_or_port_is_not_a_duplicate() -> None:
    text = "node1\nalice@node1\nalice@node1:2222\n[node1]:2222\n"
    assert len(parse_hosts_text(text, "hosts")) == 4


# --- errors: exact message, with file and line --------------------------------------------

FILE_ERRORS = [
    ("", "hosts: no hosts in file"),
    ("# only a comment\n\n   \n", "hosts: no hosts in file"),
    ("node1\nnode2 gpus=2", "hosts:2: unknown key 'gpus' (known: slots, port, user)"),
    ("node1 SLOTS=2", "hosts:1: unknown key 'SLOTS' (known: slots, port, user)"),
    ("node1 =2", "hosts:1: unknown key '' (known: slots, port, user)"),
    ("\nnode1\nnode2\nnode1", "hosts:4: node1 is listed twice (first on line 2)"),
    ("node1\nNODE1", "hosts:2: NODE1 is listed twice (first on line 1)"),
    ("alice@node1:22\nnode2\nnode1 user=alice port=22", "hosts:3: alice@node1:22 is listed twice (first on line 1)"),
    ("fe80::1\nfe80:0:0::1", "hosts:2: fe80:0:0::1 is listed twice (first on line 1)"),
    ("node1:4 slots=2", "hosts:1: conflicting slots: 'node1:4' and 'slots=2'"),
    ("node1 slots=2 slots=3", "hosts:1: conflicting slots: 'slots=2' and 'slots=3'"),
    ("alice@node1 user=bob", "hosts:1: conflicting user: 'alice@node1' and 'user=bob'"),
    ("alice@node1:22 port=23", "hosts:1: conflicting port: 'alice@node1:22' and 'port=23'"),
    ("node1 slots=0", "hosts:1: slots must be a whole number from 1 to 1024, got '0'"),
    ("node1 slots=-1", "hosts:1: slots must be a whole number from 1 to 1024, got '-1'"),
    ("node1 slots=2.5", "hosts:1: slots must be a whole number from 1 to 1024, got '2.5'"),
    ("node1 slots=", "hosts:1: slots must be a whole number from 1 to 1024, got ''"),
    ("node1 slots=+4", "hosts:1: slots must be a whole number from 1 to 1024, got '+4'"),
    ("node1 slots=1_0", "hosts:1: slots must be a whole number from 1 to 1024, got '1_0'"),
    ("node1 slots=\u0664", "hosts:1: slots must be a whole number from 1 to 1024, got '\u0664'"),
    ("node1 slots=1025", "hosts:1: slots must be a whole number from 1 to 1024, got '1025'"),
    ("node1 max_slots=x", "hosts:1: max_slots must be a whole number from 1 to 1024, got 'x'"),
    (
        "node1:0",
        "hosts:1: slots after 'node1:' must be a whole number from 1 to 1024, got '0'"
        " (for an SSH port write [node1]:PORT or user@node1:PORT)",
    ),
    (
        "node1:2222",
        "hosts:1: slots after 'node1:' must be a whole number from 1 to 1024, got '2222'"
        " (for an SSH port write [node1]:PORT or user@node1:PORT)",
    ),
    (
        "node1:",
        "hosts:1: slots after 'node1:' must be a whole number from 1 to 1024, got ''"
        " (for an SSH port write [node1]:PORT or user@node1:PORT)",
    ),
    ("alice@node1:0", "hosts:1: port must be a whole number from 1 to 65535, got '0'"),
    ("alice@node1:65536", "hosts:1: port must be a whole number from 1 to 65535, got '65536'"),
    ("alice@node1:ssh", "hosts:1: port must be a whole number from 1 to 65535, got 'ssh'"),
    ("alice@node1:", "hosts:1: port must be a whole number from 1 to 65535, got ''"),
    ("[fe80::1]:99999", "hosts:1: port must be a whole number from 1 to 65535, got '99999'"),
    ("node1 port=0", "hosts:1: port must be a whole number from 1 to 65535, got '0'"),
    ("node1 user=", "hosts:1: empty user name"),
    ("@node1", "hosts:1: empty user name"),
    ("alice@", "hosts:1: empty host name"),
    (":4", "hosts:1: empty host name"),
    ("a@b@node1", "hosts:1: more than one '@' in 'a@b@node1'; expected user@host"),
    (
        "node1 slots = 4",
        "hosts:1: expected key=value after the host, got 'slots' (one host per line; write slots=N without spaces)",
    ),
    (
        "node1 node2",
        "hosts:1: expected key=value after the host, got 'node2' (one host per line; write slots=N without spaces)",
    ),
    ("slots=4 node1", "hosts:1: expected a host before 'slots=4'; a line is: host [slots=N] [port=N] [user=NAME]"),
    ("[fe80::1", "hosts:1: malformed brackets in '[fe80::1': no closing ']'; expected [address]:PORT"),
    ("[fe80::1]2222", "hosts:1: malformed brackets in '[fe80::1]2222': '2222' after ']'; expected [address]:PORT"),
    ("[]:22", "hosts:1: malformed brackets in '[]:22': nothing inside; expected [address]:PORT"),
    ("[[fe80::1]]:22", "hosts:1: malformed brackets in '[[fe80::1]]:22': ']:22' after ']'; expected [address]:PORT"),
    (
        "fe80::1]:22",
        "hosts:1: malformed brackets in 'fe80::1]:22'; expected [address]:PORT"
        " (SLURM ranges like node[1-4] are expanded only for --hosts slurm)",
    ),
    (
        "node[1-4]",
        "hosts:1: malformed brackets in 'node[1-4]'; expected [address]:PORT"
        " (SLURM ranges like node[1-4] are expanded only for --hosts slurm)",
    ),
    (
        "[fe80::zz]:22",
        "hosts:1: 'fe80::zz' is not a valid IPv6 address (write host:SLOTS for slots, [address]:PORT for a port)",
    ),
    (
        "node1:4:22",
        "hosts:1: 'node1:4:22' is not a valid IPv6 address (write host:SLOTS for slots, [address]:PORT for a port)",
    ),
    (
        "fe80::1%",
        "hosts:1: 'fe80::1%' is not a valid IPv6 address (write host:SLOTS for slots, [address]:PORT for a port)",
    ),
    (
        "[bad_host!]:22",
        "hosts:1: '!' is not allowed in host name 'bad_host!'; expected letters, digits, '.', '-' and '_'",
    ),
    (
        "-oProxyCommand=x",
        "hosts:1: expected a host before '-oProxyCommand=x'; a line is: host [slots=N] [port=N] [user=NAME]",
    ),
    ("-node1", "hosts:1: host name '-node1' must not start with '-' (ssh would read it as an option)"),
    ("-l@node1", "hosts:1: user name '-l' must not start with '-' (ssh would read it as an option)"),
    ("node1 user=-x", "hosts:1: user name '-x' must not start with '-' (ssh would read it as an option)"),
]


@pytest.mark.parametrize(("text", "message"), FILE_ERRORS, ids=[text or "<empty>" for text, _ in FILE_ERRORS])
def test_hosts_file_error(text: str, message: str) -> None:
    assert error_of(parse_hosts_text, text, "hosts") == message


def test_error_carries_source_and_line() -> None:
    with pytest.raises(HostsFileError) as caught:
        parse_hosts_text("node1\n\n# x\nnode2 slots=zero\n", "/etc/hosts.txt")
    assert (caught.value.source, caught.value.line) == ("/etc/hosts.txt", 4)


# --- hostile input: rejected with file and line, never a traceback ------------------------

HOSTILE = [
    ("node1 slots=2\nno de2", 2, "expected key=value after the host, got 'de2'"),
    ('"node1"', 1, "'\"' is not allowed in host name '\"node1\"'"),
    ("'node1'", 1, '"\'" is not allowed in host name "\'node1\'"'),
    ("$(reboot)", 1, "'$' is not allowed in host name '$(reboot)'"),
    ("node1;reboot", 1, "';' is not allowed in host name 'node1;reboot'"),
    ("node1&&reboot", 1, "'&' is not allowed in host name 'node1&&reboot'"),
    ("node1|cat", 1, "'|' is not allowed"),
    ("`reboot`", 1, "'`' is not allowed in host name '`reboot`'"),
    ("node1>out", 1, "'>' is not allowed"),
    ("~/node1", 1, "'~' is not allowed"),
    ("node1\\x", 1, "'\\\\' is not allowed"),
    ("node*", 1, "'*' is not allowed"),
    ("$(id)@node1", 1, "'$' is not allowed in user name '$(id)'"),
    ("node1 user=$(id)", 1, "'$' is not allowed in user name '$(id)'"),
    ("node1 user=a;b", 1, "';' is not allowed in user name 'a;b'"),
    ("[$(id)]:22", 1, "'$' is not allowed in host name '$(id)'"),
    ("fe80::1%$(id)", 1, "is not a valid IPv6 address"),
    ("nöde1", 1, "'ö' is not allowed in host name 'nöde1'"),
    ("node\u00a01", 1, "spaces are not allowed in a host, got 'node\\xa01'"),
    ("node1\u200b", 1, "'\\u200b' is not allowed"),
    ("\u0661\u0662", 1, "'\u0661' is not allowed"),
    ("node\x001", 1, "'\\x00' is not allowed in host name 'node\\x001'"),
    ("node1\x1b", 1, "'\\x1b' is not allowed"),
    ("node1\x1b[31m", 1, "malformed brackets in 'node1\\x1b[31m'"),
    ("node1\rnode2", 1, "spaces are not allowed in a host"),
    ("node1\fnode2", 1, "spaces are not allowed in a host"),
    ("node1\u2028node2", 1, "spaces are not allowed in a host"),
    ("n" * 256, 1, "is too long (at most 255 characters)"),
    ("node1 slots=" + "9" * 5000, 1, "slots must be a whole number from 1 to 1024, got '9999999999"),
    ("\n\n\nnode1 slots=4 gpus=1 # comment", 4, "unknown key 'gpus'"),
    ("node1,node2", 1, "',' is not allowed in host name 'node1,node2'"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), HOSTILE, ids=[repr(text)[:40] for text, _, _ in HOSTILE])
def test_hostile_input_is_rejected_with_its_line(text: str, line: int, fragment: str) -> None:
    message = error_of(parse_hosts_text, text, "hosts")
    assert message.startswith(f"hosts:{line}: ")
    assert fragment in message
    assert "\n" not in message and len(message) < 300


def test_a_long_valid_name_is_fine() -> None:
    name = "n" * 255
    assert parse_hosts_text(name, "hosts") == (Host(name),)


# --- host specs (inline items) ------------------------------------------------------------

SPECS = [
    ("node1", Host("node1")),
    (" node1 ", Host("node1")),
    ("node1:4", Host("node1", slots=4)),
    ("alice@node1", Host("node1", user="alice")),
    ("alice@node1:2222", Host("node1", user="alice", port=2222)),
    ("[fe80::1]:2222", Host("fe80::1", port=2222)),
    ("alice@[fe80::1]:2222", Host("fe80::1", user="alice", port=2222)),
    ("fe80::1", Host("fe80::1")),
]


@pytest.mark.parametrize(("spec", "expected"), SPECS, ids=[spec for spec, _ in SPECS])
def test_host_spec(spec: str, expected: Host) -> None:
    assert parse_host_spec(spec) == expected


SPEC_ERRORS = [
    ("", "--hosts: empty host; expected host, host:SLOTS, user@host, user@host:PORT or [address]:PORT"),
    (
        "node1 slots=2",
        "--hosts: spaces are not allowed in a host, got 'node1 slots=2';"
        " expected host, host:SLOTS, user@host, user@host:PORT or [address]:PORT",
    ),
    (
        "node1:x",
        "--hosts: slots after 'node1:' must be a whole number from 1 to 1024, got 'x' (for an SSH port write [node1]:PORT or user@node1:PORT)",
    ),
]


@pytest.mark.parametrize(("spec", "message"), SPEC_ERRORS, ids=[spec or "<empty>" for spec, _ in SPEC_ERRORS])
def test_host_spec_error(spec: str, message: str) -> None:
    assert error_of(parse_host_spec, spec) == message


def test_host_spec_error_names_the_given_source_and_line() -> None:
    assert error_of(parse_host_spec, "no$pe", "cluster.txt", 7).startswith("cluster.txt:7: ")


# --- Host -------------------------------------------------------------------------------

LABELS = [
    (Host("node1"), "node1"),
    (Host("node1", slots=4), "node1"),
    (Host("node1", user="alice"), "alice@node1"),
    (Host("node1", user="alice", port=2222), "alice@node1:2222"),
    (Host("node1", port=2222), "[node1]:2222"),
    (Host("fe80::1"), "fe80::1"),
    (Host("fe80::1", port=22), "[fe80::1]:22"),
    (Host("fe80::1", user="alice"), "alice@fe80::1"),
    (Host("fe80::1", user="alice", port=22), "alice@[fe80::1]:22"),
]


@pytest.mark.parametrize(("host", "label"), LABELS, ids=[label for _, label in LABELS])
def test_label_parses_back_to_the_same_address(host: Host, label: str) -> None:
    assert host.label == label == str(host)
    assert parse_host_spec(label) == Host(host.name, user=host.user, port=host.port)


@pytest.mark.parametrize(
    ("host", "is_local"),
    [
        (LOCALHOST, True),
        (Host("localhost", slots=2), True),
        (Host("localhost", user="alice"), False),
        (Host("localhost", port=22), False),
        (Host("127.0.0.1"), False),
        (Host("node1"), False),
    ],
)
def test_is_local(host: Host, is_local: bool) -> None:
    assert host.is_local is is_local


def test_gpus_give_the_slot_count() -> None:
    assert Host("node1", gpus=(0, 2)).slots == 2
    assert Host("node1", slots=2, gpus=(0, 2)) == Host("node1", gpus=(0, 2))


# --- files on disk ------------------------------------------------------------------------


def test_parse_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"\xef\xbb\xbfnode1 slots=2\r\nnode2\r\n")
    assert parse_hosts_file(path) == (Host("node1", slots=2), Host("node2"))
    assert parse_hosts_file(str(path)) == (Host("node1", slots=2), Host("node2"))


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("node1\nnode2 slots=0\n")
    assert error_of(parse_hosts_file, path) == f"{path}:2: slots must be a whole number from 1 to 1024, got '0'"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    assert error_of(parse_hosts_file, path) == f"{path}: hosts file not found"


def test_directory(tmp_path: Path) -> None:
    assert error_of(parse_hosts_file, tmp_path) == f"{tmp_path}: is a directory, expected a hosts file"


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("node1\n")
    path = tmp_path / "file" / "hosts"
    assert error_of(parse_hosts_file, path) == f"{path}: cannot read hosts file: Not a directory"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("")
    assert error_of(parse_hosts_file, path) == f"{path}: no hosts in file"


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(b"node1\nn\xf6de2\n")
    assert error_of(parse_hosts_file, path) == f"{path}:2: not UTF-8 text (byte 0xf6); save the hosts file as UTF-8"


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_bytes(bytes(range(256)))
    assert error_of(parse_hosts_file, path).startswith(f"{path}:")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 0 cannot stop root, who runs these tests in CI, so the refusal is simulated.
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    path = tmp_path / "hosts"
    path.write_text("node1\n")
    monkeypatch.setattr("builtins.open", refuse)
    assert error_of(parse_hosts_file, path) == f"{path}: cannot read hosts file: permission denied"


# --- --hosts ------------------------------------------------------------------------------

RESOLVED = [
    (None, {}, (LOCALHOST,)),
    ("localhost", {}, (LOCALHOST,)),
    ("node1,node2:4,alice@node3", {}, (Host("node1"), Host("node2", slots=4), Host("node3", user="alice"))),
    ("node1,", {}, (Host("node1"),)),
    (",node1,,node2,", {}, (Host("node1"), Host("node2"))),
    ("node1, node2", {}, (Host("node1"), Host("node2"))),
    ("[fe80::1]:22,fe80::2", {}, (Host("fe80::1", port=22), Host("fe80::2"))),
    ("slurm", {"SLURM_JOB_NODELIST": "gpu[1-2]"}, (Host("gpu1"), Host("gpu2"))),
    ("slurm", {"SLURM_NODELIST": "gpu1"}, (Host("gpu1"),)),
    ("slurm", {"SLURM_JOB_NODELIST": "a", "SLURM_NODELIST": "b"}, (Host("a"),)),
    ("slurm", {"SLURM_JOB_NODELIST": "a,b", "SLURM_GPUS_ON_NODE": "8"}, (Host("a", slots=8), Host("b", slots=8))),
    ("slurm", {"SLURM_JOB_NODELIST": "a", "SLURM_NTASKS_PER_NODE": "4(x2)"}, (Host("a", slots=4),)),
    ("slurm", {"SLURM_JOB_NODELIST": "a", "SLURM_NTASKS_PER_NODE": "4(x2),2"}, (Host("a", slots=4),)),
    (
        "slurm",
        {"SLURM_JOB_NODELIST": "a", "SLURM_GPUS_ON_NODE": "2", "SLURM_NTASKS_PER_NODE": "4"},
        (Host("a", slots=2),),
    ),
    (
        "slurm",
        {"SLURM_JOB_NODELIST": "a", "SLURM_GPUS_ON_NODE": "0", "SLURM_NTASKS_PER_NODE": "4"},
        (Host("a", slots=4),),
    ),
    ("slurm", {"SLURM_JOB_NODELIST": "a", "SLURM_GPUS_ON_NODE": ""}, (Host("a"),)),
]


@pytest.mark.parametrize(
    ("arg", "environ", "expected"), RESOLVED, ids=[f"{arg}-{sorted(env)}" for arg, env, _ in RESOLVED]
)
def test_resolve_hosts(arg: str | None, environ: dict[str, str], expected: tuple[Host, ...]) -> None:
    assert resolve_hosts(arg, environ) == expected


RESOLVE_ERRORS = [
    ("slurm", {}, "--hosts slurm: SLURM_JOB_NODELIST is not set (not inside a SLURM allocation)"),
    (
        "slurm",
        {"SLURM_JOB_NODELIST": ""},
        "--hosts slurm: SLURM_JOB_NODELIST is not set (not inside a SLURM allocation)",
    ),
    ("slurm", {"SLURM_JOB_NODELIST": "a[1-"}, "SLURM_JOB_NODELIST: unclosed '[' in 'a[1-'"),
    (
        "slurm",
        {"SLURM_JOB_NODELIST": "a", "SLURM_GPUS_ON_NODE": "many"},
        "SLURM_GPUS_ON_NODE: expected a count such as 4 or 4(x2), got 'many'",
    ),
    (
        "slurm",
        {"SLURM_JOB_NODELIST": "a", "SLURM_NTASKS_PER_NODE": "5000"},
        "SLURM_NTASKS_PER_NODE: slots per node must be a whole number from 1 to 1024, got '5000'",
    ),
    ("node1", {}, "node1: hosts file not found (to list hosts inline, separate them with commas: node1,node2)"),
    (
        "alice@node1:22",
        {},
        "alice@node1:22: hosts file not found (to list hosts inline, separate them with commas: node1,node2)",
    ),
    ("", {}, "--hosts: empty value; expected a hosts file, node1,node2, localhost or slurm"),
    (",", {}, "--hosts: no hosts in ','; expected node1,node2"),
    ("node1,node1", {}, "--hosts: node1 is listed twice"),
    ("node1,$(id)", {}, "--hosts: '$' is not allowed in host name '$(id)'; expected letters, digits, '.', '-' and '_'"),
    (
        "node1,node2 slots=2",
        {},
        "--hosts: spaces are not allowed in a host, got 'node2 slots=2'; expected host, host:SLOTS, user@host, user@host:PORT or [address]:PORT",
    ),
]


@pytest.mark.parametrize(
    ("arg", "environ", "message"), RESOLVE_ERRORS, ids=[arg or "<empty>" for arg, _, _ in RESOLVE_ERRORS]
)
def test_resolve_hosts_error(arg: str, environ: dict[str, str], message: str) -> None:
    assert error_of(resolve_hosts, arg, environ) == message


def test_resolve_hosts_reads_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "a,b"  # an existing file wins over the inline reading of a comma
    path.write_text("node1 slots=2\n")
    assert resolve_hosts(str(path), {}) == (Host("node1", slots=2),)


def test_resolve_hosts_reads_slurm_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    assert resolve_hosts("slurm") == (Host("n1"), Host("n2"))


# --- SLURM node lists ---------------------------------------------------------------------

NODELISTS = [
    ("node1", ("node1",)),
    ("node1,node2", ("node1", "node2")),
    (" node1 ", ("node1",)),
    ("node[1-3]", ("node1", "node2", "node3")),
    ("node[01-04,07],gpu-a", ("node01", "node02", "node03", "node04", "node07", "gpu-a")),
    ("node[8-10]", ("node8", "node9", "node10")),
    ("node[08-10]", ("node08", "node09", "node10")),
    ("node[007]", ("node007",)),
    ("[1-2]node", ("1node", "2node")),
    ("rack[1-2]-n[1-2]", ("rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2")),
    ("a[1,3]b[7-8]c,d", ("a1b7c", "a1b8c", "a3b7c", "a3b8c", "d")),
    ("gpu-[1-2],cpu-[3-4]", ("gpu-1", "gpu-2", "cpu-3", "cpu-4")),
    ("n[5-5]", ("n5",)),
    ("10.0.0.[1-2]", ("10.0.0.1", "10.0.0.2")),
]


@pytest.mark.parametrize(("nodelist", "expected"), NODELISTS, ids=[nodelist for nodelist, _ in NODELISTS])
def test_expand_slurm_nodelist(nodelist: str, expected: tuple[str, ...]) -> None:
    assert expand_slurm_nodelist(nodelist) == expected


def test_expand_slurm_nodelist_large() -> None:
    names = expand_slurm_nodelist("n[0000-4095]")
    assert len(names) == 4096 and names[0] == "n0000" and names[-1] == "n4095"


NODELIST_ERRORS = [
    ("", "empty node list"),
    ("node[1-3", "unclosed '[' in 'node[1-3'"),
    ("node1-3]", "']' without '[' in 'node1-3]'"),
    ("node[1[2]]", "nested '[' in 'node[1[2]]'"),
    ("a,,b", "empty entry in 'a,,b'; expected names separated by single commas"),
    ("a,", "empty entry in 'a,'; expected names separated by single commas"),
    ("node[]", "bad range '' in 'node[]'; expected N or N-M inside [...]"),
    ("node[a-b]", "bad range 'a-b' in 'node[a-b]'; expected N or N-M inside [...]"),
    ("node[1-]", "bad range '1-' in 'node[1-]'; expected N or N-M inside [...]"),
    ("node[1,,2]", "bad range '' in 'node[1,,2]'; expected N or N-M inside [...]"),
    ("node[1-4:2]", "bad range '1-4:2' in 'node[1-4:2]'; expected N or N-M inside [...]"),
    ("node[3-1]", "range 3-1 in 'node[3-1]' goes backwards"),
    ("node[1-99999999999]", "node list expands to more than 65536 hosts"),
    ("a[1-300]b[1-300]", "node list expands to more than 65536 hosts"),
    ("node1,node[1-2]", "node node1 is listed twice"),
    ("node$(id)", "'$' is not allowed in node name 'node$(id)'; expected letters, digits, '.', '-' and '_'"),
    ("-x[1-2]", "node name '-x1' must not start with '-' (ssh would read it as an option)"),
    ("a b", "' ' is not allowed in node name 'a b'; expected letters, digits, '.', '-' and '_'"),
]


@pytest.mark.parametrize(
    ("nodelist", "message"), NODELIST_ERRORS, ids=[nodelist or "<empty>" for nodelist, _ in NODELIST_ERRORS]
)
def test_expand_slurm_nodelist_error(nodelist: str, message: str) -> None:
    assert error_of(expand_slurm_nodelist, nodelist) == f"SLURM_JOB_NODELIST: {message}"


# --- --include / --exclude ----------------------------------------------------------------

CLUSTER = (
    Host("node1", slots=4),
    Host("node2", slots=4),
    Host("node3"),
    Host("node4", user="alice", port=2222, slots=2),
    Host("fe80::1", port=22, slots=2),
)

SELECTIONS = [
    (None, None, CLUSTER),
    ("node2", None, (CLUSTER[1],)),
    ("node3@node1", None, (CLUSTER[0], CLUSTER[2])),
    (" node1 @ node2 ", None, (CLUSTER[0], CLUSTER[1])),
    ("NODE1", None, (CLUSTER[0],)),
    ("node1:0,2", None, (Host("node1", slots=2, gpus=(0, 2)),)),
    ("node1:3@node2", None, (Host("node1", gpus=(3,)), CLUSTER[1])),
    ("node1:0,0", None, (Host("node1", gpus=(0,)),)),
    ("node3:0,1", None, (Host("node3", gpus=(0, 1)),)),
    ("node4", None, (CLUSTER[3],)),
    ("node4:1", None, (Host("node4", user="alice", port=2222, gpus=(1,)),)),
    ("[fe80::1]", None, (CLUSTER[4],)),
    ("[fe80::1]:1", None, (Host("fe80::1", port=22, gpus=(1,)),)),
    ("fe80::1", None, (CLUSTER[4],)),
    ("fe80::1:0", None, (Host("fe80::1", port=22, gpus=(0,)),)),
    (None, "node1", CLUSTER[1:]),
    (None, "node1@node3", (CLUSTER[1], CLUSTER[3], CLUSTER[4])),
    (None, "node1:0", (Host("node1", gpus=(1, 2, 3)), *CLUSTER[1:])),
    (None, "node4:0,1", (*CLUSTER[:3], CLUSTER[4])),
]


@pytest.mark.parametrize(("include", "exclude", "expected"), SELECTIONS, ids=[f"{i}-{e}" for i, e, _ in SELECTIONS])
def test_select_hosts(include: str | None, exclude: str | None, expected: tuple[Host, ...]) -> None:
    assert select_hosts(CLUSTER, include, exclude) == expected


SELECTION_ERRORS = [
    ("node1", "node2", "--include: cannot be used together with --exclude; use one or the other"),
    ("node9", None, "--include: unknown host 'node9' (the hosts are: node1, node2, node3, node4, fe80::1)"),
    (
        "node1,node2",
        None,
        "--include: unknown host 'node1,node2' (the hosts are: node1, node2, node3, node4, fe80::1);"
        " separate hosts with '@', not ','",
    ),
    ("node9:0", None, "--include: unknown host 'node9:0' (the hosts are: node1, node2, node3, node4, fe80::1)"),
    ("node1:x", None, "--include: unknown host 'node1:x' (the hosts are: node1, node2, node3, node4, fe80::1)"),
    ("", None, "--include: empty entry in ''; expected host1@host2:0,1"),
    ("node1@", None, "--include: empty entry in 'node1@'; expected host1@host2:0,1"),
    ("node1@node1", None, "--include: node1 is named twice"),
    ("node1@node1:0", None, "--include: node1 is named both whole and with GPUs; name it once"),
    ("node1:4", None, "--include: GPU 4 is not on node1, which has GPUs 0-3"),
    (None, "node1@node2@node3@node4@fe80::1", "--exclude: no hosts left to run on"),
    (
        None,
        "node3:0",
        "--exclude: cannot exclude GPUs on node3: its GPU count is unknown (give it slots=N in the hosts file)",
    ),
    (None, "node4:5", "--exclude: GPU 5 is not on alice@node4:2222, which has GPUs 0,1"),
    (None, "node9", "--exclude: unknown host 'node9' (the hosts are: node1, node2, node3, node4, fe80::1)"),
]


@pytest.mark.parametrize(
    ("include", "exclude", "message"), SELECTION_ERRORS, ids=[f"{i}-{e}" for i, e, _ in SELECTION_ERRORS]
)
def test_select_hosts_error(include: str | None, exclude: str | None, message: str) -> None:
    assert error_of(select_hosts, CLUSTER, include, exclude) == message


def test_exclude_every_gpu_of_a_host_drops_it() -> None:
    assert select_hosts(CLUSTER[:2], None, "node1:0,1,2,3") == (CLUSTER[1],)
    assert error_of(select_hosts, CLUSTER[:1], None, "node1:0,1,2,3") == "--exclude: no hosts left to run on"


def test_a_name_with_several_users_names_each() -> None:
    hosts = (Host("node1"), Host("node1", user="alice"), Host("node2"))
    assert select_hosts(hosts, "node1", None) == hosts[:2]
    assert select_hosts(hosts, None, "node1") == hosts[2:]


# --- properties ---------------------------------------------------------------------------

HOSTS_FILE_ALPHABET = st.sampled_from(
    [*"node1234:@[]#=,.-_ \t\r\n$`'\"\\;|&()*~\x00é\u2028\ufeff", "slots", "port", "user", "max_slots", "fe80::", "::1"]
)
HOSTS_FILE_TEXT = st.one_of(st.text(), st.lists(HOSTS_FILE_ALPHABET, max_size=40).map("".join))


def assert_is_hosts_file_error(error: HostsFileError, source: str) -> None:
    if error.line is None:
        assert str(error).startswith(f"{source}: ")
    else:
        assert error.line >= 1
        assert str(error).startswith(f"{source}:{error.line}: ")


@FUZZ
@given(HOSTS_FILE_TEXT)
def test_any_text_parses_or_raises_hosts_file_error(text: str) -> None:
    try:
        hosts = parse_hosts_text(text, "fuzz.txt")
    except HostsFileError as error:
        assert_is_hosts_file_error(error, "fuzz.txt")
        assert error.line is None or error.line <= text.count("\n") + 1
    else:
        assert hosts
        assert all(isinstance(host, Host) for host in hosts)


@FUZZ
@given(HOSTS_FILE_TEXT)
def test_any_inline_list_parses_or_raises_hosts_file_error(text: str) -> None:
    try:
        hosts = resolve_hosts(text + ",", {})
    except HostsFileError as error:
        assert str(error).startswith("--hosts: ")
    else:
        assert hosts
        assert all(isinstance(host, Host) for host in hosts)


@FUZZ
@given(st.one_of(st.text(), st.lists(st.sampled_from([*"ab01-9[],", "[1-3]", "[0-2,5]"]), max_size=20).map("".join)))
def test_any_nodelist_expands_or_raises_hosts_file_error(nodelist: str) -> None:
    try:
        names = expand_slurm_nodelist(nodelist)
    except HostsFileError as error:
        assert_is_hosts_file_error(error, "SLURM_JOB_NODELIST")
    else:
        assert names
        assert len(set(names)) == len(names)


SELECTION_ALPHABET = st.sampled_from(
    ["node1", "NODE3", "node4", "fe80::1", "[", "]", ":", "0", "1", "7", ",", "@", " "]
)
SELECTION_TEXT = st.one_of(st.none(), st.text(max_size=20), st.lists(SELECTION_ALPHABET, max_size=12).map("".join))


@FUZZ
@given(SELECTION_TEXT, SELECTION_TEXT)
def test_any_selection_selects_or_raises_hosts_file_error(include: str | None, exclude: str | None) -> None:
    try:
        selected = select_hosts(CLUSTER, include, exclude)
    except HostsFileError as error:
        assert str(error).startswith(("--include: ", "--exclude: "))
    else:
        assert selected
        assert {host.name for host in selected} <= {host.name for host in CLUSTER}
        assert all(host.gpus is None or host.slots == len(host.gpus) for host in selected)


NAME_CHARACTERS = string.ascii_letters + string.digits + "._-"
NAMES = st.text(NAME_CHARACTERS, min_size=1, max_size=30).filter(lambda name: not name.startswith("-"))
IPV6_NAMES = st.ip_addresses(v=6).map(str)
USERS = st.text(NAME_CHARACTERS, min_size=1, max_size=12).filter(lambda user: not user.startswith("-"))
GENERATED_HOSTS = st.builds(
    Host,
    name=st.one_of(NAMES, IPV6_NAMES),
    user=st.none() | USERS,
    port=st.none() | st.integers(1, 65535),
    slots=st.none() | st.integers(1, MAX_SLOTS),
)


def identity(host: Host) -> tuple[str, str | None, int | None]:
    name = str(ipaddress.IPv6Address(host.name)) if ":" in host.name else host.name.lower()
    return name, host.user, host.port


@settings(FUZZ, max_examples=150)
@given(st.lists(GENERATED_HOSTS, min_size=1, max_size=8, unique_by=identity))
def test_round_trip_through_label_and_slots(hosts: list[Host]) -> None:
    text = "".join(host.label + ("" if host.slots is None else f" slots={host.slots}") + "\n" for host in hosts)
    assert parse_hosts_text(text, "hosts") == tuple(hosts)

    # Inline, host:N carries slots only where nothing else claims the colon.
    def inline_spec(host: Host) -> str:
        if host.slots is None or host.user or host.port or ":" in host.name:
            return host.label
        return f"{host.label}:{host.slots}"

    inline_hosts = resolve_hosts(",".join(map(inline_spec, hosts)) + ",", {})
    assert [(host.name, host.user, host.port) for host in inline_hosts] == [
        (host.name, host.user, host.port) for host in hosts
    ]
    assert all(parsed.slots in (None, original.slots) for parsed, original in zip(inline_hosts, hosts, strict=True))
