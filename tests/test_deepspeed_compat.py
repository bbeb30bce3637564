"""DeepSpeed's own launcher tests, run against our hosts files and ``--include``/``--exclude``.

The cases are the inputs and expected results of DeepSpeed's ``tests/unit/launcher/test_run.py``
(microsoft/DeepSpeed at 38327e07f6cd, Apache-2.0), which tests ``deepspeed/launcher/runner.py``:
``_parse_hostfile`` (what ``fetch_hostfile`` calls) and ``parse_resource_filter`` (what
``parse_inclusion_exclusion`` calls). None of DeepSpeed's code is here, only its data, each case
mapped to our API: ``parse_hosts_text``, ``select_hosts`` and ``check_nproc_for_gpus``.

DeepSpeed writes a selection as ``{host: [GPU, ...]}`` and a hosts file as ``{host: slots}``; our
result is turned into that form, so its expectations are compared as it wrote them. Where it
expects a ``ValueError``, ours must raise our error, and the case gives our exact message.
Where we differ on purpose, ``ours`` holds our result and ``differs`` says why and what DeepSpeed
does; ``DIFFERENT_ON_PURPOSE`` pins which cases those are.

The ``deepspeed`` column was checked by running those DeepSpeed functions on every case. Its
launch path calls ``parse_inclusion_exclusion``, which disagrees with its own tests on two of
them (``--include worker-0`` selects nothing; ``--include worker-1:4`` is accepted); these cases
follow the tests, which say what is meant.

Not mapped: ``test_num_plus_parser``'s cases drive DeepSpeed's ``main()``. Its ``--num_nodes``
has no counterpart (the hosts given are the nodes), and ``-e localhost`` on a localhost-only pool
leaves nothing to run on, which the exclude cases cover. Its ``--num_gpus 1 -i localhost`` is the
one ``NPROC_CASES`` entry taken from DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from launcher.errors import HostsFileError, LauncherError, UsageError
from launcher.hosts.files import Host, parse_hosts_text
from launcher.hosts.selection import check_nproc_for_gpus, select_hosts

Resources = dict[str, list[int]]
"""DeepSpeed's form of a selection: host name -> the GPUs used on it, in hosts order."""


def error_of(error_type: type[LauncherError], call: Callable[..., object], *args: object) -> str:
    with pytest.raises(error_type) as caught:
        call(*args)
    return str(caught.value)


# --- parse_resource_filter: --include / --exclude ---------------------------------------


@dataclass(frozen=True)
class FilterCase:
    test: str
    """Where the case comes from: DeepSpeed's test function, or ``runner.py`` for a rule of
    its code that its tests do not reach (checked against that code when the case was written)."""

    hosts: Resources
    include: str | None
    exclude: str | None

    deepspeed: Resources | type[ValueError]
    """DeepSpeed's expected result, as its test writes it."""

    ours: Resources | str | None = None
    """Our result where it is not DeepSpeed's, or our error message; None: DeepSpeed's result."""

    differs: str = ""
    """Why ours is not DeepSpeed's, on purpose; empty where the two agree."""

    @property
    def id(self) -> str:
        given = [f"{flag}={value}" for flag, value in (("include", self.include), ("exclude", self.exclude)) if value]
        return f"{self.test}:{','.join(given) or 'no filter'}"

    @property
    def agrees(self) -> bool:
        if self.deepspeed is ValueError:
            return isinstance(self.ours, str)  # both refuse; ours says it in our words
        return self.ours is None


ONE = {"worker-0": [0, 1, 2, 3]}
SIXTEEN = {"worker-0": list(range(16))}
TWO = {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1, 2, 3]}
NOTHING_LEFT = (
    "an empty selection is an error here, where DeepSpeed returns no hosts and then fails later "
    "(an IndexError on the first host, or a launch of nothing)"
)

FILTER_CASES = [
    FilterCase(
        "test_parser_mutual_exclusive",
        {},
        "A",
        "B",
        ValueError,
        "--include: cannot be used together with --exclude; use one or the other",
    ),
    FilterCase("test_parser_local", ONE, None, None, ONE),
    FilterCase("test_parser_local", ONE, None, "worker-0:1", {"worker-0": [0, 2, 3]}),
    FilterCase("test_parser_local", ONE, None, "worker-0:1,2", {"worker-0": [0, 3]}),
    FilterCase("test_parser_local", ONE, "worker-0:1", None, {"worker-0": [1]}),
    FilterCase("test_parser_local", ONE, "worker-0:1,1", None, {"worker-0": [1]}),
    FilterCase("test_parser_local", ONE, "worker-0:1@worker-0:0,1", None, {"worker-0": [0, 1]}),
    FilterCase("test_parser_local", ONE, "worker-0", None, ONE),
    FilterCase(
        "test_parser_local", ONE, None, "worker-0", {}, "--exclude: no hosts left to run on", differs=NOTHING_LEFT
    ),
    FilterCase(
        "test_parser_local",
        ONE,
        None,
        "worker-0:0,1,2,3",
        {},
        "--exclude: no hosts left to run on",
        differs=NOTHING_LEFT,
    ),
    FilterCase("test_parser_multinode", TWO, None, None, TWO),
    FilterCase("test_parser_multinode", TWO, "worker-1:0,3", None, {"worker-1": [0, 3]}),
    FilterCase("test_parser_multinode", TWO, None, "worker-1", {"worker-0": [0, 1, 2, 3]}),
    FilterCase(
        "test_parser_multinode", TWO, None, "worker-0:0,1@worker-1:3", {"worker-0": [2, 3], "worker-1": [0, 1, 2]}
    ),
    FilterCase(
        "test_parser_errors",
        TWO,
        "jeff",
        None,
        ValueError,
        "--include: unknown host 'jeff' (the hosts are: worker-0, worker-1)",
    ),
    FilterCase(
        "test_parser_errors",
        TWO,
        None,
        "jeff",
        ValueError,
        "--exclude: unknown host 'jeff' (the hosts are: worker-0, worker-1)",
    ),
    FilterCase(
        "test_parser_errors",
        TWO,
        "worker-1:4",
        None,
        ValueError,
        "--include: GPU 4 is not on worker-1, which has GPUs 0-3",
    ),
    FilterCase(
        "test_parser_errors",
        TWO,
        None,
        "worker-1:4",
        ValueError,
        "--exclude: GPU 4 is not on worker-1, which has GPUs 0-3",
    ),
    FilterCase(
        "test_parser_errors",
        TWO,
        None,
        "worker-1@worker-0:1@5",
        ValueError,
        "--exclude: unknown host '5' (the hosts are: worker-0, worker-1)",
    ),
    # DeepSpeed's parse_node_config_list: sorted(set(...)) of every list given for a host.
    FilterCase("runner.py", ONE, "worker-0:3,1", None, {"worker-0": [1, 3]}),
    # A set of small ints iterates sorted by chance; 8 and 1 are where it does not.
    FilterCase("runner.py", SIXTEEN, "worker-0:8,1", None, {"worker-0": [1, 8]}),
    FilterCase("runner.py", SIXTEEN, "worker-0:8@worker-0:1", None, {"worker-0": [1, 8]}),
    FilterCase("runner.py", ONE, None, "worker-0:1,1", {"worker-0": [0, 2, 3]}),
    FilterCase("runner.py", ONE, None, "worker-0:1@worker-0:2", {"worker-0": [0, 3]}),
    FilterCase(
        "runner.py",
        ONE,
        "worker-0@worker-0:1",
        None,
        {"worker-0": [1]},
        "--include: worker-0 is named both whole and with GPUs; name it once",
        differs="DeepSpeed lets the GPU list win over the whole host; which was meant cannot be told",
    ),
    FilterCase(
        "runner.py",
        ONE,
        None,
        "worker-0@worker-0:1",
        {"worker-0": [0, 2, 3]},
        "--exclude: worker-0 is named both whole and with GPUs; name it once",
        differs="DeepSpeed drops only GPU 1, though worker-0 is also excluded whole",
    ),
    FilterCase(
        "runner.py",
        ONE,
        "worker-0@worker-0",
        None,
        ONE,
        "--include: worker-0 is named twice",
        differs="a host named twice is most likely a typo for another host; DeepSpeed takes it once",
    ),
]

DIFFERENT_ON_PURPOSE = {
    "test_parser_local:exclude=worker-0",
    "test_parser_local:exclude=worker-0:0,1,2,3",
    "runner.py:include=worker-0@worker-0:1",
    "runner.py:exclude=worker-0@worker-0:1",
    "runner.py:include=worker-0@worker-0",
}


def as_hosts(resources: Resources) -> tuple[Host, ...]:
    # DeepSpeed's hosts come from a hosts file, so every host has GPUs 0..slots-1.
    assert all(gpus == list(range(len(gpus))) for gpus in resources.values())
    return tuple(Host(name, slots=len(gpus)) for name, gpus in resources.items())


def as_resources(hosts: tuple[Host, ...]) -> Resources:
    resources: Resources = {}
    for host in hosts:
        assert host.slots is not None
        resources[host.name] = list(host.gpus) if host.gpus is not None else list(range(host.slots))
    return resources


def test_the_cases_that_differ_are_the_ones_meant_to() -> None:
    assert len({case.id for case in FILTER_CASES}) == len(FILTER_CASES)
    assert {case.id for case in FILTER_CASES if not case.agrees} == DIFFERENT_ON_PURPOSE
    for case in FILTER_CASES:
        assert bool(case.differs) == (not case.agrees), case.id
        assert case.deepspeed is not ValueError or isinstance(case.ours, str), case.id


@pytest.mark.parametrize("case", FILTER_CASES, ids=[case.id for case in FILTER_CASES])
def test_include_exclude(case: FilterCase) -> None:
    hosts = as_hosts(case.hosts)
    expected = case.deepspeed if case.ours is None else case.ours
    if isinstance(expected, str):
        assert error_of(HostsFileError, select_hosts, hosts, case.include, case.exclude) == expected
    else:
        assert isinstance(expected, dict)
        selected = as_resources(select_hosts(hosts, case.include, case.exclude))
        assert list(selected.items()) == list(expected.items())  # in order: the first host runs rank 0


def test_a_host_named_with_several_users_merges_each_one_s_gpus() -> None:
    hosts = (Host("node1", slots=4), Host("node1", user="alice", slots=2), Host("node2", slots=4))
    assert select_hosts(hosts, "node1:1@node1:0", None) == (
        Host("node1", gpus=(0, 1)),
        Host("node1", user="alice", gpus=(0, 1)),
    )
    assert error_of(HostsFileError, select_hosts, hosts, "node1:0@node1:3", None) == (
        "--include: GPU 3 is not on alice@node1, which has GPUs 0,1"
    )


# --- _parse_hostfile: hosts files ---------------------------------------------------------


@dataclass(frozen=True)
class HostfileCase:
    name: str
    """DeepSpeed's comment on the case."""

    text: str
    deepspeed: dict[str, int] | type[ValueError]
    ours: tuple[Host, ...] | str | None = None
    """Our hosts where they are not DeepSpeed's, or our error message; None: DeepSpeed's result."""

    differs: str = ""

    @property
    def agrees(self) -> bool:
        if self.deepspeed is ValueError:
            return isinstance(self.ours, str)
        return self.ours is None


# As in DeepSpeed's test: indented, with blank lines, as its triple-quoted strings are.
GOOD = """
    worker-1 slots=2
    worker-2 slots=2

    localhost slots=1
    123.23.12.10 slots=2

    #worker-1 slots=3
    # this is a comment

    """
DUPLICATE = """
    worker-1 slots=2
    worker-2 slots=1
    worker-1 slots=1
    """
BAD_WHITESPACE = """
    this is bad slots=1
    """
MISSING_SLOTS = """
    missingslots
    """
EMPTY = """
    """
MIXED = """
    worker-1 slots=2
    this is bad slots=1
    worker-2 slots=4
    missingslots

    """

HOSTFILE_CASES = [
    HostfileCase(
        "good hostfile w. empty lines and comment",
        GOOD,
        {"worker-1": 2, "worker-2": 2, "localhost": 1, "123.23.12.10": 2},
    ),
    HostfileCase("duplicate host", DUPLICATE, ValueError, "hostfile:4: worker-1 is listed twice (first on line 2)"),
    HostfileCase(
        "incorrect whitespace",
        BAD_WHITESPACE,
        ValueError,
        "hostfile:2: expected key=value after the host, got 'is' (one host per line; write slots=N without spaces)",
    ),
    HostfileCase(
        "no whitespace",
        MISSING_SLOTS,
        ValueError,
        (Host("missingslots"),),
        differs="a host without slots= is allowed here and runs --nproc-per-node processes (default 1); "
        "DeepSpeed refuses the line",
    ),
    HostfileCase("empty", EMPTY, ValueError, "hostfile: no hosts in file"),
    HostfileCase(
        "mix of good/bad",
        MIXED,
        ValueError,
        "hostfile:3: expected key=value after the host, got 'is' (one host per line; write slots=N without spaces)",
    ),
]


def test_the_hostfile_cases_that_differ_are_the_ones_meant_to() -> None:
    assert [case.name for case in HOSTFILE_CASES if not case.agrees] == ["no whitespace"]
    for case in HOSTFILE_CASES:
        assert bool(case.differs) == (not case.agrees), case.name


@pytest.mark.parametrize("case", HOSTFILE_CASES, ids=[case.name for case in HOSTFILE_CASES])
def test_hostfile(case: HostfileCase) -> None:
    if isinstance(case.ours, str):
        assert error_of(HostsFileError, parse_hosts_text, case.text, "hostfile") == case.ours
    elif case.ours is not None:
        assert parse_hosts_text(case.text, "hostfile") == case.ours
    else:
        assert isinstance(case.deepspeed, dict)
        hosts = parse_hosts_text(case.text, "hostfile")
        assert [(host.name, host.slots) for host in hosts] == list(case.deepspeed.items())
        assert all(host.user is None and host.port is None for host in hosts)


# --- --num_gpus with a filter: check_nproc_for_gpus ---------------------------------------

PICKED = (Host("node1", slots=4), Host("node2", slots=4), Host("node3"))

NPROC_CASES = [
    # DeepSpeed's test_num_plus_parser: "--num_gpus 1 -i localhost" is a ValueError there, as is
    # any --num_gpus with -i/-e. Here a number is refused only where it exceeds the GPUs picked:
    # one process on a whole host is well defined.
    ("localhost", None, "1", None),
    ("node1:0,1", None, "2", None),
    ("node1:0,1", None, "1", None),
    ("node1:0,1", None, None, None),
    ("node1:0,1", None, "gpu", None),
    ("node1:0,1", None, "auto", None),
    ("node1@node3", None, "8", None),
    (
        "node1:0,1",
        None,
        "3",
        "--nproc-per-node 3 is more than the 2 GPUs picked on node1 (0,1); pass --nproc-per-node 2 or fewer,"
        " or pick more GPUs",
    ),
    (
        "node1:2@node2:1,3",
        None,
        "02",
        "--nproc-per-node 2 is more than the 1 GPU picked on node1 (2); pass --nproc-per-node 1 or fewer,"
        " or pick more GPUs",
    ),
    (
        "node1@node2:1,3",
        None,
        "4",
        "--nproc-per-node 4 is more than the 2 GPUs picked on node2 (1,3); pass --nproc-per-node 2 or fewer,"
        " or pick more GPUs",
    ),
    (
        None,
        "node1:0",
        "4",
        "--nproc-per-node 4 is more than the 3 GPUs picked on node1 (1,2,3); pass --nproc-per-node 3 or fewer,"
        " or pick more GPUs",
    ),
    (None, "node2:0", "3", None),
]


@pytest.mark.parametrize(("include", "exclude", "nproc", "message"), NPROC_CASES)
def test_nproc_against_the_gpus_picked(
    include: str | None, exclude: str | None, nproc: str | None, message: str | None
) -> None:
    pool = (Host("localhost"),) if include == "localhost" else PICKED
    hosts = select_hosts(pool, include, exclude)
    if message is None:
        check_nproc_for_gpus(hosts, nproc)
    else:
        assert error_of(UsageError, check_nproc_for_gpus, hosts, nproc) == message
