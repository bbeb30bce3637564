"""The rendezvous preflight's parts: real sockets on loopback (node/network.py), the choice
of the address and the interface variables (rendezvous.py), the per-host plan, and the
agent's prepare through the middle layer (a real agent holding and probing a port)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from local_node import LocalNode

from launcher.errors import JobError, PortBusyError, RendezvousUnreachableError
from launcher.hosts.files import Host
from launcher.launching.plan import GPUS, IFNAME, dry_plan, plan_nodes
from launcher.launching.rendezvous import choose, interface_env, probe_addresses, unreachable_message
from launcher.launching.spec import make_spec
from launcher.node import network
from launcher.node.errors import NodeError
from launcher.node.preflight import hold_rendezvous
from launcher.protocol.messages import Prepare, Prepared, Probe


@pytest.fixture
def listener() -> Iterator[int]:
    key = f"test-{time.monotonic_ns()}"
    port = network.hold(key, 0)
    yield port
    network.release(key)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose SYNs go unanswered, on loopback: a listener with a full accept queue."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):  # listen(0) takes one; the queue overflows after that
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for filler in fillers:
        filler.close()
    server.close()


# ------------------------------------------------------------------ node/network.py, real sockets


def test_a_held_port_is_reached_over_loopback_and_released(listener: int) -> None:
    [probe] = network.probe(["127.0.0.1"], listener, timeout=2)
    assert probe == Probe("127.0.0.1", listener, ok=True, interface="lo")
    with pytest.raises(OSError):  # still held: nobody else can listen there
        socket.create_server(("127.0.0.1", listener)).close()


def test_a_closed_port_is_refused_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        began = time.monotonic()
        [probe] = network.probe(["127.0.0.1"], port, timeout=3)
    assert probe.ok is False and probe.error == "connection refused"
    assert time.monotonic() - began < 1


def test_a_dropped_connection_times_out_after_the_timeout(full_backlog: int) -> None:
    began = time.monotonic()
    [probe] = network.probe(["127.0.0.1"], full_backlog, timeout=0.5)
    took = time.monotonic() - began
    assert probe.ok is False and probe.error == "timed out after 0.5 s"
    assert probe.interface == "lo"  # the route is known even when the connection fails
    assert 0.4 < took < 2


def test_the_probe_stops_at_the_first_address_that_answers(listener: int, full_backlog: int) -> None:
    """Addresses after the first reached one are not waited for; those before it are."""
    began = time.monotonic()
    probes = network.probe(["127.0.0.1", "127.0.0.2"], listener, timeout=5)
    assert probes[0].ok is True and time.monotonic() - began < 1
    assert probes[1].ok in (True, None)
    probes = network.probe(["not an address", "127.0.0.1"], listener, timeout=5)
    assert probes[0].ok is False and probes[1].ok is True


def test_the_route_and_the_owner_of_an_address() -> None:
    assert network.route_interface("127.0.0.1") == "lo"
    assert network.interface_addresses()["lo"] == ["127.0.0.1"]
    table = {"lo": ["127.0.0.1"], "eth0": ["10.0.0.2"], "ens4": ["10.1.0.2"]}
    assert network.interface_of("10.1.0.2", table) == "ens4"
    assert network.interface_of("::ffff:10.0.0.2", table) == "eth0"
    assert network.interface_of("10.9.9.9", table) is None


def test_candidates_put_the_ssh_address_first_and_leave_out_loopback() -> None:
    candidates = network.candidate_addresses("10.200.0.7")
    assert candidates[0] == "10.200.0.7"
    assert not any(c.startswith("127.") for c in candidates)
    assert network.candidate_addresses("fe80::1")[:1] != ["fe80::1"]  # link-local: useless to others


def test_a_taken_rendezvous_port_is_one_clear_refusal(listener: int) -> None:
    with pytest.raises(NodeError) as caught:
        hold_rendezvous("other-job", listener)
    assert caught.value.kind == "port_busy"
    assert f"port {listener}" in str(caught.value) and "--rdzv-port" in str(caught.value)


# ------------------------------------------------------------------ rendezvous.py, pure

HOSTS = (Host("h0"), Host("h1"), Host("h2"))


def answer(*probes: tuple[str, bool | None, str | None], preset: tuple[str, ...] = ()) -> Prepared:
    return Prepared(
        run_dir="/r",
        probes=[Probe(a, 29500, ok, None if ok else "timed out after 3 s", i) for a, ok, i in probes],
        preset_env=list(preset),
    )


FIRST = Prepared(
    run_dir="/r",
    port=29500,
    candidates=["10.0.0.2", "10.1.0.2"],
    probes=[Probe("10.0.0.2", 29500, True, None, "eth0"), Probe("10.1.0.2", 29500, True, None, "eth1")],
)


def test_every_host_reaches_the_first_address() -> None:
    prepared = [FIRST, answer(("10.0.0.2", True, "ens3")), answer(("10.0.0.2", True, "enp1s0"))]
    chosen = choose(HOSTS, prepared, ["10.0.0.2", "10.1.0.2"])
    assert (chosen.address, chosen.port, chosen.interfaces) == ("10.0.0.2", 29500, ("eth0", "ens3", "enp1s0"))


def test_hosts_that_meet_only_on_the_second_network_meet_there() -> None:
    first_fails = [("10.0.0.2", False, "ens3"), ("10.1.0.2", True, "ens4")]
    prepared = [FIRST, answer(*first_fails), answer(("10.0.0.2", False, None), ("10.1.0.2", True, "enp2s0"))]
    chosen = choose(HOSTS, prepared, ["10.0.0.2", "10.1.0.2"])
    assert (chosen.address, chosen.interfaces) == ("10.1.0.2", ("eth1", "ens4", "enp2s0"))


def test_a_host_that_reaches_nothing_fails_the_launch_naming_it_and_the_address() -> None:
    prepared = [FIRST, answer(("10.0.0.2", True, "ens3")), answer(("10.0.0.2", False, None), ("10.1.0.2", False, None))]
    with pytest.raises(JobError) as caught:
        choose(HOSTS, prepared, ["10.0.0.2", "10.1.0.2"])
    assert list(caught.value.errors) == ["h2"]
    assert isinstance(caught.value.errors["h2"], RendezvousUnreachableError)
    assert str(caught.value) == (
        "launch failed, nothing was started (h2: cannot connect to the first host's rendezvous at"
        " 10.0.0.2:29500 (timed out after 3 s), 10.1.0.2:29500 (timed out after 3 s); is a firewall dropping the port?)"
    )


def test_hosts_that_reach_different_addresses_fail_every_one() -> None:
    prepared = [FIRST, answer(("10.0.0.2", True, "a")), answer(("10.0.0.2", False, None), ("10.1.0.2", True, "b"))]
    with pytest.raises(JobError) as caught:
        choose(HOSTS, prepared, ["10.0.0.2", "10.1.0.2"])
    assert sorted(caught.value.errors) == ["h1", "h2"]


def test_probe_order_prefers_the_ssh_address_then_the_local_one() -> None:
    assert probe_addresses(FIRST, "10.1.0.2", None) == ["10.1.0.2", "10.0.0.2"]
    assert probe_addresses(FIRST, None, "10.0.0.1") == ["10.0.0.1", "10.0.0.2", "10.1.0.2"]
    assert unreachable_message([]) == "cannot connect to the rendezvous: the first host named no address"


@pytest.mark.parametrize(
    ("user", "preset", "expected"),
    [
        ({}, (), {"NCCL_SOCKET_IFNAME": "ens4", "GLOO_SOCKET_IFNAME": "ens4"}),
        ({"NCCL_SOCKET_IFNAME": "ib0"}, (), {"GLOO_SOCKET_IFNAME": "ens4"}),
        ({}, ("GLOO_SOCKET_IFNAME",), {"NCCL_SOCKET_IFNAME": "ens4"}),
        ({"NCCL_SOCKET_IFNAME": "^docker"}, ("GLOO_SOCKET_IFNAME",), {}),
    ],
)
def test_a_users_or_the_hosts_own_setting_wins(user: dict[str, str], preset: tuple[str, ...], expected: object) -> None:
    assert interface_env("ens4", user, preset) == expected
    assert interface_env(None, {}, ()) == {}


# ------------------------------------------------------------------ plan.py


def test_the_plan_gives_each_host_its_interface_and_its_gpus() -> None:
    spec = make_spec("t.py", hosts="a,b:3,c", environ={"NCCL_SOCKET_IFNAME": "ib0"})
    prepared = [replace(FIRST, gpus=8), answer(), replace(answer(("x", True, "y")), gpus=None)]
    plans = plan_nodes(spec, "j", ("10.0.0.2", 29500), ["/r"] * 3, prepared, ("eth0", "ens3", None))
    nprocs = [p.argv[p.argv.index("--nproc-per-node") + 1] for p in plans]
    assert nprocs == ["8", "3", "1"]  # its GPUs; its slots win; none known: 1
    assert [p.env.get("GLOO_SOCKET_IFNAME") for p in plans] == ["eth0", "ens3", None]
    assert {p.env["NCCL_SOCKET_IFNAME"] for p in plans} == {"ib0"}  # forwarded from the user's shell


def test_the_dry_run_says_what_is_chosen_at_launch() -> None:
    plans = dry_plan(make_spec("t.py", hosts="a,b:2", environ={}), "j")
    assert [p.argv[p.argv.index("--nproc-per-node") + 1] for p in plans] == [GPUS, "2"]
    assert all(p.env["NCCL_SOCKET_IFNAME"] == p.env["GLOO_SOCKET_IFNAME"] == IFNAME for p in plans)
    [single] = dry_plan(make_spec("t.py", hosts=[Host("a")], nproc_per_node=2, environ={}), "j")
    assert "NCCL_SOCKET_IFNAME" not in single.env  # one host: nothing to pin


# ------------------------------------------------------------------ the agent's prepare (middle layer)


def test_the_first_nodes_agent_holds_the_port_until_it_closes_and_another_reaches_it(node: LocalNode) -> None:
    async def scenario() -> tuple[Prepared, Prepared, bool]:
        first = await node.open()
        other = await node.open()
        try:
            held = await first.call(Prepare(job="j", cwd="/", want_port=True))
            assert held.port is not None
            probe = ["127.0.0.1", *held.candidates]
            reached = await other.call(Prepare(job="j", cwd="/", probe=probe, probe_port=held.port))
        finally:
            await first.close()
            await other.close()
        with socket.socket() as sock:  # the agent is gone and so is its socket
            free = sock.connect_ex(("127.0.0.1", held.port)) != 0
        return held, reached, free

    with node.environment():
        held, reached, free = asyncio.run(scenario())
    assert held.watch_port and held.candidates and all(p.ok for p in held.probes)
    assert reached.probes[0] == Probe("127.0.0.1", held.port or 0, ok=True, interface="lo")
    assert free


def test_the_first_node_refuses_a_taken_port_by_type(node: LocalNode, listener: int) -> None:
    with pytest.raises(PortBusyError, match=f"port {listener}"):
        node.call(Prepare(job="j", cwd="/", want_port=True, port=listener))


def test_a_node_without_gpus_counts_one_and_refuses_gpu(node: LocalNode) -> None:
    """This machine has no NVIDIA GPU (the GPU tests are under tests/gpu)."""
    from launcher.errors import NoGpusError
    from launcher.node import gpus

    if gpus.list_gpus().gpus:
        pytest.skip("this machine has GPUs")
    assert node.call(Prepare(job="j", cwd="/", count_gpus=True, check_gpus=[])).gpus == 1
    with pytest.raises(NoGpusError, match="--nproc-per-node gpu, but this host has no GPU"):
        node.call(Prepare(job="j", cwd="/", need_gpus=True))
