"""Where the rendezvous goes, checked before anything starts, and each host's interface.

The first host's prepare listens on the rendezvous port and names its addresses, the
likeliest first; every other host's prepare connects to them (``node/network.py``). The
address chosen is the first that every host reached; a host that reached none fails the
launch there and then, naming itself and what it tried. Each host's interface towards
that address becomes its ``NCCL_SOCKET_IFNAME`` and ``GLOO_SOCKET_IFNAME`` (the names may
differ between hosts), unless the user or the host's own environment sets them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from launcher.errors import HostError, JobError, RendezvousUnreachableError
from launcher.hosts.files import Host
from launcher.launching import commands
from launcher.protocol.base import IFNAME_VARIABLES
from launcher.protocol.doctor import NodeReport
from launcher.protocol.messages import Prepared, Probe


@dataclass(frozen=True)
class Rendezvous:
    """The address the hosts meet at, and the interface each host reaches it over."""

    address: str
    port: int
    interfaces: tuple[str | None, ...]
    """By host, in order; None where unknown."""


def address_order(candidates: Sequence[str], *preferred: str | None) -> list[str]:
    """The first host's addresses in the order they are tried and chosen: ``preferred``
    first (known, not None), then the first host's own ``candidates``; each once."""
    return [a for a in dict.fromkeys([*preferred, *candidates]) if a]


def probe_addresses(first: Prepared | NodeReport, first_address: str | None, local_address: str | None) -> list[str]:
    """What a host should try (a launch's prepare, a doctor's checkup), in order: the address
    the launching machine reached the first host at (or, when the first host is this machine,
    the address this host's SSH connection leaves from), then the first host's other addresses."""
    return address_order(first.candidates, first_address or local_address)


def choose(hosts: Sequence[Host], prepared: Sequence[Prepared], order: Sequence[str]) -> Rendezvous:
    """The first address of ``order`` that every other host reached.

    Raises JobError naming each host that reached none, with the addresses it tried.
    """
    first = prepared[0]
    if first.port is None:
        raise HostError(hosts[0].label, "the first host picked no rendezvous port")
    reached = [{p.address for p in answer.probes if p.ok} for answer in prepared[1:]]
    for address in order:
        if all(address in seen for seen in reached):
            return Rendezvous(address, first.port, tuple(interface_for(answer, address) for answer in prepared))
    failures: dict[str, HostError] = {}
    for host, answer, seen in zip(hosts[1:], prepared[1:], reached, strict=True):
        if not seen or not any(address in seen for address in order):
            failures[host.label] = RendezvousUnreachableError(host.label, unreachable_message(answer.probes))
    if not failures:  # each host reached some address, but no address reached them all
        failures = {
            host.label: RendezvousUnreachableError(host.label, unreachable_message(answer.probes))
            for host, answer in zip(hosts[1:], prepared[1:], strict=True)
        }
    raise JobError("launch failed, nothing was started", failures)


def unreachable_message(probes: Sequence[Probe]) -> str:
    """``cannot connect to the rendezvous at 10.0.0.2:29500 (timed out after 3 s), ...``"""
    tried = [p for p in probes if p.ok is not None]
    if not tried:
        return "cannot connect to the rendezvous: the first host named no address"
    parts = [f"{commands.rdzv_endpoint(p.address, p.port)} ({'reached' if p.ok else p.error})" for p in tried]
    return f"cannot connect to the first host's rendezvous at {', '.join(parts)}; is a firewall dropping the port?"


def interface_for(answer: Prepared, address: str) -> str | None:
    return next((p.interface for p in answer.probes if p.address == address and p.ok), None)


def interface_env(interface: str | None, user_env: Mapping[str, str], preset: Sequence[str]) -> dict[str, str]:
    """The interface variables for one host: neither a user's own setting nor one the
    host's environment has is overridden."""
    if interface is None:
        return {}
    return {name: interface for name in IFNAME_VARIABLES if name not in user_env and name not in preset}
