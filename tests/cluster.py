"""A real test cluster: N hosts in network namespaces, each running its own sshd.

Every host is a network namespace joined to one Linux bridge in the root namespace (the
launching machine's side), with its own UTS, PID and mount namespaces: its own hostname,
its own process tree (so "nothing of the job remains on the host" can be checked) and a
private ``/tmp`` (so each host gets its own tmux server). The rest of the filesystem is
shared, like an NFS home; in particular the cluster's ``workdir`` is visible on every host
at the same path, even when it lives under ``/tmp``, and so are the checkout (``repo``,
by default the one this file is in), the Python environment and the checkout that
``launcher`` is imported from: the suite runs from a clone or a venv in /tmp too. Only a
checkout (or environment) that is /tmp itself cannot be, as each host needs a /tmp of its
own: ``start_cluster`` then fails with a ``ClusterError`` that says to move it.

    with start_cluster(3, workdir) as cluster:
        env = cluster.env()              # HOME=<fake home>: asyncssh finds ~/.ssh/config
        subprocess.run(["ssh", "-F", str(cluster.ssh_config), "h1", "hostname"], env=env)

Options (keywords of ``start_cluster``; the defaults give the cluster above):

``shared_disk=False``
    Hosts that share no disk. Each host gets its own ``cluster.project_dir`` (where tests
    put code; it exists on the launching side too, and starts empty on every host) and its
    own ``cluster.node_state_dir`` (XDG_STATE_HOME of its SSH sessions): a directory of the
    workdir per host, bound over those paths in the host's mount namespace, so what one
    host writes there no other host, and not the launching side, sees. The disk outlives
    a reboot. The Python environment and the repo stay shared. ``TestHost.read_file``,
    ``exists`` and ``write_file`` see a host's own view. To give one host another
    interpreter, write a wrapper at the same path on each host, say
    ``host.write_file(cluster.project_dir / "python", "#!/bin/sh\\nexec python3 \\"$@\\"\\n", 0o755)``,
    a different one (or none) on that host, and launch with ``--python`` naming that path.

``shared_scratch=True`` (or the indexes of some hosts, ``shared_scratch=[0, 1]``)
    A disk those hosts share and the launching side does not, as a cluster's scratch or
    home is: ``cluster.scratch_dir`` is one directory on those hosts, bound over that path
    in their mount namespaces after they start (and again after a reboot), while the
    launching side (and any other host) sees an empty directory there. The disk itself is
    ``cluster.scratch_disk`` on the launching side, for a test to look at.

``networks=2``
    Every host gets a second interface, on a second bridge and /24 subnet, and interface
    names differ between hosts: h0 ``eth0``/``eth1``, h1 ``ens3``/``ens4``, h2
    ``enp1s0``/``enp2s0``, h3 ``eth0``/``eth1`` again... ``TestHost.addresses``,
    ``interfaces`` and ``links`` hold one entry per network; ``cluster.gateways`` and
    ``bridges`` the launching side's address and the bridge of each. sshd listens on both
    networks, and ssh (the generated config) reaches the hosts on network 1.
    With ``isolate_first_network=True`` the hosts' ports on bridge 1 are isolated: on
    network 1 a host reaches the launching side and the launching side every host, but
    no host reaches another, so host to host (a rendezvous, NCCL/gloo) goes only over
    network 2. /etc/hosts on the hosts resolves a host's name to its network-1 address,
    or, when that network is isolated, to its network-2 address: to the address the other
    hosts can reach, which is what torch's gloo assumes of ``gethostname()``.

``bastion=True``
    One more host, ``bastion`` (``cluster.bastion``, not in ``cluster.hosts``), with sshd's
    default MaxStartups (10:30:100), on two networks: the launching side's (network 1) and
    one of hosts only (network 2, no address of the launching side). The hosts are only on
    network 2, and the generated ssh config reaches them with ``ProxyJump bastion``; a
    direct connection times out (the launching side routes that subnet onto the bridge
    of network 2, so nothing leaves this machine, and the hosts have no route back).
    ``TestHost.address`` of a host is its network-2 address. At most ``MAX_HOSTS - 1`` hosts.

``second_user=True``
    A login user without root beside root, ``cluster.user`` (a ``TestUser``, see
    ``cluster_user.py``): ``lnch-<token>-u``, with a home of its own in /home (0700; its
    ``.ssh`` holds its key, ``known_hosts``, an ssh config with the same host aliases, and
    the ``authorized_keys`` every host's sshd reads for it). ``user.run(argv)`` runs a
    command as that user with ``user.env()``: HOME its home, no XDG_STATE_HOME, so its
    launcher state is ``~/.local/state`` here and on the hosts (root's keys and
    ``node_state_dir`` are root's only). It may search (x) every directory above the
    interpreter and the checkout: where others lacked that, the cluster gives ``o+x``
    until it closes. ``close()`` deletes the user and its home and takes those bits back.

Size: 1 to ``MAX_HOSTS`` (253, a /24) hosts. Start-up costs a few process starts per host
(host keys are made in-process) and stop one ``ip link del group``: here, on 2 busy cores,
64 hosts start in about 1.5 s, 128 in 3.5 s and 253 in 8 s; each stops in under a second.

Faults, on any cluster: ``host.set_link(False)`` cuts a host off (a pulled cable; ``True``
heals it), ``host.crash()`` is a power cut (link down, and SIGKILL to the init of its PID
namespace, which takes every process of the host at once), and ``cluster.reboot(host)``
brings a crashed or running host back: a fresh PID namespace and /tmp, the same network
namespace, hostname, address, host key and disk, sshd accepting connections again, and
the new ``TestHost`` in ``cluster.hosts`` (the old one keeps naming the dead host).
``host.block_tcp(port, direction="in")`` is a firewall (nftables, in the host's network
namespace) that silently drops TCP to the host's ``port`` (``"out"``: to ``port`` elsewhere;
no port: all TCP), say a rendezvous port; ``host.unblock_all()`` lifts it. Needs ``nft``.

Needs root. Everything a cluster creates is named ``lnch-<token>...`` and recorded in
``/run/lnch-clusters/<token>.json`` with the creating process (and its second user, and
the directories it opened for it), so that ``remove_stale_clusters`` (run at every start)
can delete what a crashed run left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from cluster_user import (
    TestUser,
    add_user,
    close_for_search,
    directories_to_open,
    hand_over_home,
    open_for_search,
    paths_to_search,
    remove_user,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from registry import Registry

__all__ = [
    "Cluster",
    "ClusterError",
    "TestHost",
    "TestUser",
    "remove_stale_clusters",
    "start_cluster",
]

NAME_PREFIX = "lnch"
REGISTRY_DIR = Path("/run/lnch-clusters")
_REGISTRY = Registry(REGISTRY_DIR)
SSH_PORT = 22
ALT_SSH_PORT = 2222
GUEST_GRACE_S = 2.0
"""How long the hosts' processes get after SIGTERM before their namespace is SIGKILLed."""
"""Every sshd also listens here, for hosts files that name a port (``root@host:2222``)."""
START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 5.0
# Addresses .2 to .254 of a /24; veth names "lnch-<6 hex>-<index>" then fit IFNAMSIZ (15 chars).
MAX_HOSTS = 253
BASTION = "bastion"
FIREWALL_TABLE = "lnch_firewall"
"""The nftables table of ``TestHost.block_tcp``, in the host's network namespace."""
INTERFACE_NAMES = (("eth0", "eth1"), ("ens3", "ens4"), ("enp1s0", "enp2s0"))
"""Interface names of hosts h0, h1, h2, h3... on two networks: they differ between hosts."""
LINK_GROUP_BASE = 0x6C000000
"""Plus the token (24 bits): the link group of a cluster, unique as its token is."""
REPO = Path(__file__).resolve().parent.parent
"""The checkout these tests belong to: the hosts must see it (and the interpreter), at its path."""
TMP = Path("/tmp")
USER_HOMES = Path("/home")
"""Where the second user's home is (not in the workdir: pytest takes "others" off the
modes of its /tmp/pytest-of-<user> at each start, so another session would lock it out)."""

# Runs inside the host's fresh namespaces, as its init: $1 hostname, $2 hosts file,
# $3 sshd config, $4 workdir. The private tmpfs would hide a workdir under /tmp, so the
# shell keeps a handle on it (its cwd) and binds it back at the same path; `mount -c`
# stops mount from resolving "." by name, which would now find the empty tmpfs.
# Without a shared disk, $5 is the host's own disk (a directory of the workdir), whose
# project/ and node-state/ are bound over $6 (project dir) and $7 (node state dir); a
# tmpfs over $8 (the folder of every host's disk) then hides the other hosts' disks.
# $9 and on: more paths under /tmp that the hosts must see (the checkout, the Python
# environment), bound back from the real /tmp, reached through the shell's fd 3 on it.
# unshare makes the new mount namespace private, so none of this reaches the root side.
HOST_INIT_SCRIPT = """\
set -e
keep_visible() {
  shift 8
  for dir in "$@"; do
    mkdir -p "$dir"
    mount -c --bind "/proc/self/fd/3/${dir#/tmp/}" "$dir"
  done
}
cd "$4"
exec 3</tmp
mount -t tmpfs -o mode=1777 tmpfs /tmp
keep_visible "$@"
exec 3<&-
mkdir -p "$4"
mount -c --bind . "$4"
if [ -n "$5" ]; then
  mount --bind "$5/project" "$6"
  mount --bind "$5/node-state" "$7"
  mount -t tmpfs -o mode=0755 tmpfs "$8"
fi
mount --bind "$2" /etc/hosts
hostname "$1"
exec /usr/sbin/sshd -D -e -f "$3"
"""

# What a cluster creates in its workdir (besides the hosts files it is asked to write).
WORKDIR_ENTRIES = ("home", "node-state", "launcher-state", "sshd", "etc-hosts", "authorized_keys", "project", "disks")
WORKDIR_ENTRIES += ("scratch", "scratch-disk")  # the shared scratch (``shared_scratch``)

# Paths are written unquoted into ssh_config and sshd_config, where whitespace, quotes
# and "%" (a token in AuthorizedKeysFile) would change their meaning.
SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


class ClusterError(RuntimeError):
    """The test cluster could not be built or torn down."""


@dataclass(frozen=True)
class TestHost:
    """One host of a running cluster, seen from the root namespace."""

    __test__ = False  # a library class, not a pytest test class

    name: str
    """Hostname inside the host and alias in the generated ssh config: ``h0``, ``h1``..."""
    address: str
    """IPv4 address where ssh reaches the host (its first interface); sshd listens on port
    22 (and 2222) of every address of the host."""
    netns: str
    """Name of the network namespace (``ip netns``)."""
    link: str
    """Root-side end of the host's veth pair, a port of the cluster's bridge."""
    init_pid: int
    """PID, as seen from the root namespace, of the init (sshd) of the host's PID namespace."""
    pid_namespace: str
    """``readlink /proc/<pid>/ns/pid`` of the host's processes, e.g. ``pid:[4026532301]``."""
    addresses: tuple[str, ...]
    """IPv4 address of each interface, in network order (``addresses[1]``: on network 2)."""
    interfaces: tuple[str, ...]
    """Name of each interface inside the host, as ``addresses``: ``eth0``, or ``ens3``..."""
    links: tuple[str, ...]
    """Root-side end of each interface's veth pair, as ``addresses``."""

    def processes(self) -> list[tuple[int, str]]:
        """PID (root namespace view) and command line of every process in this host.

        Empty once the host is gone: the kernel kills a PID namespace with its init. After
        ``Cluster.reboot``, ask the ``TestHost`` it returns: the kernel may give the new PID
        namespace the number of the old one, so the old ``TestHost`` could list its processes.
        """
        found: list[tuple[int, str]] = []
        for pid in _all_pids():
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") != self.pid_namespace:
                    continue
                found.append((pid, _command_line(pid)))
            except OSError:  # it exited while we looked
                continue
        return found

    def run(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host (its network, hostname, processes and /tmp)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "--net", "--uts", "--pid", "--mount", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def read_file(self, path: str | Path) -> str:
        """The text of ``path`` as this host sees it (its own disk, /tmp and mounts)."""
        result = self.run(["cat", "--", str(path)])
        if result.returncode != 0:
            raise ClusterError(f"{self.name}: cannot read {path}: {result.stderr.strip()}")
        return result.stdout

    def exists(self, path: str | Path) -> bool:
        """Whether ``path`` exists as this host sees it."""
        return self.run(["test", "-e", str(path)]).returncode == 0

    def write_file(self, path: str | Path, text: str, mode: int = 0o644) -> None:
        """Write ``text`` to ``path`` on this host only (parents created), with ``mode``."""
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1" && chmod "$2" -- "$1"'
        result = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "--mount", "--", "sh", "-c", script, "sh", str(path), f"{mode:o}"],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"{self.name}: cannot write {path}: {result.stderr.strip()}")

    def set_link(self, up: bool, network: int | None = None) -> None:
        """Connect (``up``) or cut the host's links, as pulled cables would: all of them,
        or only the one of its interface ``network`` (an index into ``links``)."""
        for link in self.links if network is None else [self.links[network]]:
            _run_ip(["link", "set", link, "up" if up else "down"])

    def block_tcp(self, port: int | None = None, direction: Literal["in", "out"] = "in") -> None:
        """Firewall the host (nftables in its network namespace): drop TCP packets, silently.

        ``"in"``: arriving for the host's own ``port``, so connections to it time out.
        ``"out"``: leaving for ``port`` on other machines. ``port=None``: all TCP that way
        (``"in"`` then takes ssh too). Loopback stays open: the host still reaches itself,
        as a real host firewall allows. Rules add up until ``unblock_all()``.
        """
        chain, interface = ("input", "iifname") if direction == "in" else ("output", "oifname")
        match = "meta l4proto tcp" if port is None else f"tcp dport {int(port)}"
        self._nft(
            f"add table inet {FIREWALL_TABLE}\n"
            f"add chain inet {FIREWALL_TABLE} {chain} {{ type filter hook {chain} priority 0; policy accept; }}\n"
            f'add rule inet {FIREWALL_TABLE} {chain} {interface} != "lo" {match} drop\n'
        )

    def unblock_all(self) -> None:
        """Remove every rule ``block_tcp`` added."""
        # Adding the table first makes the delete succeed when there is nothing to remove.
        self._nft(f"add table inet {FIREWALL_TABLE}\ndelete table inet {FIREWALL_TABLE}\n")

    def throttle(self, rate: str = "10mbit", network: int = 0) -> None:
        """Slow the host's link (its interface ``network``) to ``rate``, both ways, as a bad
        NIC or cable would: a token bucket (tc tbf) on the host's side of the veth pair for
        what it sends, and on the bridge's side for what it receives. ``unthrottle()``
        removes both; the qdiscs go with the links when the cluster closes."""
        shape = ["tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
        _run_tc(["qdisc", "replace", "dev", self.interfaces[network], "root", *shape], self.netns)
        _run_tc(["qdisc", "replace", "dev", self.links[network], "root", *shape])

    def unthrottle(self, network: int = 0) -> None:
        """Remove what ``throttle`` set (the kernel's default queue comes back)."""
        _run_tc(["qdisc", "del", "dev", self.interfaces[network], "root"], self.netns, missing_ok=True)
        _run_tc(["qdisc", "del", "dev", self.links[network], "root"], missing_ok=True)

    def _nft(self, script: str) -> None:
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, "nft", "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"{self.name}: nft -f -: {result.stderr.strip()}")

    def crash(self) -> None:
        """Power cut: the link goes down, then every process of the host dies at once.

        SIGKILL to the init of the host's PID namespace makes the kernel kill all the rest;
        nothing gets to clean up or say goodbye on the network. ``Cluster.reboot`` brings
        the host back. Returns once nothing of the host runs.
        """
        self.set_link(False)
        _kill_init(self)
        deadline = time.monotonic() + STOP_DEADLINE_S
        while self.processes():
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name}: processes survived the crash: {self.processes()}")
            time.sleep(0.01)

    def is_up(self) -> bool:
        """Whether the host's init (its sshd) still runs."""
        return _init_alive(self)


@dataclass(frozen=True)
class _NetworkPlan:
    """One bridge in the root namespace and the subnet on it."""

    bridge: str
    subnet: ipaddress.IPv4Network
    mac_prefix: str
    """Locally administered MACs derived from the subnet, unique across live clusters, so
    the permanent neighbour entries can be written before the links exist."""
    gateway: str | None
    """Address of the launching side on this network; None for a network of hosts only."""
    isolated: bool = False
    """Bridge port isolation: the hosts reach the launching side here, not each other."""

    @property
    def gateway_mac(self) -> str:
        return f"{self.mac_prefix}:00:01"

    @staticmethod
    def plan(
        bridge: str, subnet: ipaddress.IPv4Network, *, gateway: bool = True, isolated: bool = False
    ) -> _NetworkPlan:
        octets = subnet.network_address.packed
        return _NetworkPlan(
            bridge=bridge,
            subnet=subnet,
            mac_prefix=f"02:6c:{octets[1]:02x}:{octets[2]:02x}",
            gateway=str(subnet.network_address + 1) if gateway else None,
            isolated=isolated,
        )


@dataclass(frozen=True)
class _InterfacePlan:
    """One interface of a host: a veth pair from the host to a network's bridge."""

    network: int
    """Index into ``_Layout.networks``."""
    name: str
    """Inside the host: ``eth0``, ``ens3``..."""
    address: str
    mac: str
    link: str
    """Root-side end of the veth pair, a port of the network's bridge."""
    link_mac: str


@dataclass(frozen=True)
class _HostPlan:
    """Names and addresses of one host, fixed before anything is created."""

    name: str
    netns: str
    interfaces: tuple[_InterfacePlan, ...]
    ssh_address: str
    """Where ssh reaches the host (``HostName``), from the launching side or the bastion."""
    named_address: str
    """What the host's name resolves to in /etc/hosts."""
    proxy_jump: str | None = None
    max_startups: bool = True
    """Whether sshd lifts MaxStartups (to 200) above its default of 10:30:100."""

    @property
    def address(self) -> str:
        return self.interfaces[0].address

    @property
    def link(self) -> str:
        return self.interfaces[0].link


@dataclass(frozen=True)
class _Layout:
    """Names and addresses of a whole cluster."""

    token: str
    group: int
    """Link group (``ip link ... group``) of every root-side link: one ``link del group``
    removes them all at once, where one ``link del`` per link takes seconds at 253 hosts."""
    networks: tuple[_NetworkPlan, ...]
    hosts: tuple[_HostPlan, ...]
    """``h0``..``h<n-1>``, then the bastion if there is one."""

    @property
    def bridge(self) -> str:
        return self.networks[0].bridge

    @property
    def bridge_address(self) -> str:
        gateway = self.networks[0].gateway
        assert gateway is not None  # the first network always has the launching side
        return gateway

    @staticmethod
    def plan(
        n: int,
        token: str,
        subnet: ipaddress.IPv4Network,
        second_subnet: ipaddress.IPv4Network | None = None,
        *,
        isolate_first_network: bool = False,
        bastion: bool = False,
    ) -> _Layout:
        prefix = f"{NAME_PREFIX}-{token}"
        networks = [_NetworkPlan.plan(prefix, subnet, isolated=isolate_first_network)]
        if second_subnet is not None:
            networks.append(_NetworkPlan.plan(f"{prefix}-n1", second_subnet, gateway=not bastion))

        def interface(network: int, slot: int, name: str) -> _InterfacePlan:
            net = networks[network]
            # Network 0's links keep the plain "lnch-<token>-<index>"; "v<hex>" fits 253 too.
            link = f"{prefix}-{slot}" if network == 0 else f"{prefix}-v{slot:02x}"
            return _InterfacePlan(
                network=network,
                name=name,
                address=str(net.subnet.network_address + slot + 2),
                mac=f"{net.mac_prefix}:00:{slot + 2:02x}",
                link=link,
                link_mac=f"{net.mac_prefix}:01:{slot + 2:02x}",
            )

        hosts = []
        interfaces: tuple[_InterfacePlan, ...]
        for i in range(n):
            if bastion:
                interfaces = (interface(1, i, "eth0"),)
            elif second_subnet is not None:
                names = INTERFACE_NAMES[i % len(INTERFACE_NAMES)]
                interfaces = (interface(0, i, names[0]), interface(1, i, names[1]))
            else:
                interfaces = (interface(0, i, "eth0"),)
            hosts.append(
                _HostPlan(
                    name=f"h{i}",
                    netns=f"{prefix}-{i}",
                    interfaces=interfaces,
                    ssh_address=interfaces[0].address,
                    named_address=interfaces[-1 if isolate_first_network or bastion else 0].address,
                    proxy_jump=BASTION if bastion else None,
                )
            )
        if bastion:
            interfaces = (interface(0, n, "eth0"), interface(1, n, "eth1"))
            hosts.append(
                _HostPlan(
                    name=BASTION,
                    netns=f"{prefix}-{n}",
                    interfaces=interfaces,
                    ssh_address=interfaces[0].address,
                    named_address=interfaces[1].address,
                    max_startups=False,
                )
            )
        return _Layout(
            token=token,
            group=LINK_GROUP_BASE + int(token, 16),
            networks=tuple(networks),
            hosts=tuple(hosts),
        )

    def root_commands(self) -> list[str]:
        """``ip -batch`` lines run in the root namespace: namespaces, bridges, veths."""
        lines = [f"netns add {h.netns}" for h in self.hosts]
        for net in self.networks:
            lines.append(f"link add {net.bridge} address {net.gateway_mac} group {self.group} type bridge")
        for h in self.hosts:
            for i in h.interfaces:
                lines.append(
                    f"link add {i.link} address {i.link_mac} group {self.group} type veth"
                    f" peer name {i.name} address {i.mac} netns {h.netns}"
                )
                lines.append(f"link set {i.link} master {self.networks[i.network].bridge} up")
                if self.networks[i.network].isolated:
                    lines.append(f"link set {i.link} type bridge_slave isolated on")
        for net in self.networks:
            lines.append(f"link set {net.bridge} up")
            if net.gateway is not None:
                lines.append(f"addr add {net.gateway}/24 dev {net.bridge}")
            else:
                # A network of hosts only still gets a route here, onto its own bridge:
                # without one, packets for it would take the default route off this
                # machine. The hosts have no route back, so nothing connects.
                lines.append(f"route add {net.subnet} dev {net.bridge}")
        # ARP never gets a say: with 32 busy hosts a lost ARP reply stalls a connect
        # for a second, which shows up as flaky timeouts.
        for i in self._interfaces():
            net = self.networks[i.network]
            if net.gateway is not None:
                lines.append(f"neigh replace {i.address} lladdr {i.mac} dev {net.bridge} nud permanent")
        return lines

    def host_commands(self, host: _HostPlan) -> list[str]:
        """``ip -batch`` lines run inside one host's network namespace."""
        lines = ["link set lo up"]
        for mine in host.interfaces:
            net = self.networks[mine.network]
            lines += [f"addr add {mine.address}/24 dev {mine.name}", f"link set {mine.name} up"]
            if net.gateway is not None:
                lines.append(f"neigh replace {net.gateway} lladdr {net.gateway_mac} dev {mine.name} nud permanent")
            lines += [
                f"neigh replace {other.address} lladdr {other.mac} dev {mine.name} nud permanent"
                for other in self._interfaces()
                if other.network == mine.network and other is not mine
            ]
        return lines

    def _interfaces(self) -> list[_InterfacePlan]:
        return [i for h in self.hosts for i in h.interfaces]

    def etc_hosts(self) -> str:
        """The /etc/hosts every host sees: gethostname() must resolve to an address that
        the other hosts reach (gloo binds to it)."""
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{h.named_address}\t{h.name}" for h in self.hosts]
        return "\n".join(lines) + "\n"


class Cluster:
    """A running test cluster. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        workdir: Path,
        layout: _Layout,
        shared_disk: bool = True,
        visible: Sequence[Path] = (),
        user: str | None = None,
    ) -> None:
        self.workdir = workdir
        """Shared by the launching side and every host, at the same path."""
        self.home = workdir / "home"
        """Fake HOME of the launching side: ``.ssh/{config,id_ed25519,known_hosts}``."""
        self.ssh_config = self.home / ".ssh" / "config"
        self.node_state_dir = workdir / "node-state"
        """XDG_STATE_HOME of every SSH session on every host: one directory for all, unless
        ``shared_disk`` is false, when each host has its own (and the launching side a third)."""
        self.project_dir = workdir / "project"
        """A directory for the code a test runs, at the same path everywhere. Shared with
        the hosts, unless ``shared_disk`` is false: then each host has its own, empty at start."""
        self.shared_disk = shared_disk
        """Whether the hosts share ``project_dir`` and ``node_state_dir`` with everyone."""
        self.scratch_dir = workdir / "scratch"
        """With ``shared_scratch``: the directory those hosts share, and no one else."""
        self.scratch_disk = workdir / "scratch-disk"
        """What ``scratch_dir`` is on those hosts, seen from the launching side."""
        self.scratch_hosts: tuple[int, ...] = ()
        """The indexes of the hosts that share ``scratch_dir`` (``start_cluster`` sets them)."""
        self.launcher_state_dir = workdir / "launcher-state"
        """XDG_STATE_HOME of the launching side (see ``env()``)."""
        self.gateway = layout.bridge_address
        """Address of the launching side on the (first) cluster network."""
        self.gateways = tuple(net.gateway for net in layout.networks)
        """Per network, the launching side's address on it (None: a network of hosts only)."""
        self.token = layout.token
        """Random part of every name the cluster gives (namespaces, links, registry record)."""
        self.bridge = layout.bridge
        """Name of the bridge joining the hosts, in the root namespace."""
        self.bridges = tuple(net.bridge for net in layout.networks)
        """Per network, its bridge."""
        self.hosts: list[TestHost] = []
        """``h0``..``h<n-1>``, in order; a reboot replaces its host here."""
        self.bastion: TestHost | None = None
        """The bastion, with ``bastion=True``: the one host the launching side reaches."""
        self.user: TestUser | None = None
        """The second login user, with ``second_user=True`` (see ``cluster_user.py``)."""
        self._user_name = user
        self._visible = visible
        """Paths under /tmp bound into every host besides the workdir: the checkout..."""
        self._layout = layout
        self._sshd_dir = workdir / "sshd"
        self._etc_hosts = workdir / "etc-hosts"
        self._authorized_keys = workdir / "authorized_keys"
        self._disks = workdir / "disks"
        self._created = [workdir / name for name in WORKDIR_ENTRIES]
        self._servers: list[subprocess.Popen[bytes]] = []
        self._closed = False

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a launcher process on the launching side."""
        env = dict(os.environ)
        # An agent full of the developer's keys would use up sshd's MaxAuthTries first.
        env.pop("SSH_AUTH_SOCK", None)
        env["HOME"] = str(self.home)
        env["XDG_STATE_HOME"] = str(self.launcher_state_dir)
        env.update(extra)
        return env

    def write_hosts_file(self, lines: list[str], name: str = "hosts") -> Path:
        """Write a launcher hosts file into the workdir; removed by ``close()``."""
        path = self.workdir / name
        path.write_text("".join(line + "\n" for line in lines))
        if path not in self._created:
            self._created.append(path)
        return path

    def close(self) -> None:
        """Kill every process of every host and delete all the cluster made. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_servers()
        finally:
            layout = self._layout
            _delete_network(
                groups=[layout.group],
                links=[i.link for h in layout.hosts for i in h.interfaces] + list(self.bridges),
                namespaces=[h.netns for h in layout.hosts],
            )
            for path in self._created:
                _remove_path(path)
            if self._user_name is not None:
                with _REGISTRY.lock():
                    _remove_user_locked(layout.token)
            _REGISTRY.remove(layout.token)

    def reboot(self, host: TestHost | str) -> TestHost:
        """Bring ``host`` (crashed, or running: then it is crashed first) back up.

        It gets a fresh PID namespace and a fresh /tmp, and keeps its network namespace,
        hostname, address, host key and disk. Returns the new ``TestHost`` (which also
        replaces the old one in ``hosts``) once its sshd accepts connections.
        """
        name = host if isinstance(host, str) else host.name
        index = [h.name for h in self._machines()].index(name)
        old, plan = self._machines()[index], self._layout.hosts[index]
        if old.is_up():
            old.crash()
        self._servers[index].wait(timeout=STOP_DEADLINE_S)  # unshare exits with its init
        self._servers[index] = self._start_host(plan)
        old.set_link(True)
        self._wait_for_sshd(time.monotonic() + START_DEADLINE_S, [index])
        new = self._describe_host(plan, _children_of(self._servers[index].pid))
        if new.name == BASTION:
            self.bastion = new
        else:
            self.hosts[index] = new
            self._share_scratch([new])
        return new

    def _share_scratch(self, hosts: Sequence[TestHost]) -> None:
        """Bind the shared scratch disk over ``scratch_dir`` on those of ``hosts`` that share it."""
        sharing = {f"h{i}" for i in self.scratch_hosts}
        for host in hosts:
            if host.name in sharing:
                mounted = host.run(["mount", "--bind", str(self.scratch_disk), str(self.scratch_dir)])
                if mounted.returncode != 0:
                    raise ClusterError(f"{host.name}: cannot mount the shared scratch: {mounted.stderr.strip()}")

    def _machines(self) -> list[TestHost]:
        """Every host, the bastion too, in the order of ``_layout.hosts``."""
        return self.hosts + ([self.bastion] if self.bastion is not None else [])

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        self._make_dirs()
        _run_ip_batch(self._layout.root_commands())
        batches = [_start_ip_batch(self._layout.host_commands(h), netns=h.netns) for h in self._layout.hosts]
        try:
            self._generate_keys()  # while the hosts' networks are configured
        finally:
            _wait_all(batches, what="configure host network")
        self._write_ssh_files()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self._servers = [self._start_host(h) for h in self._layout.hosts]
        self._wait_for_sshd(time.monotonic() + START_DEADLINE_S, range(len(self._servers)))
        children = _children_by_parent()  # one pass over /proc, not one per host
        machines = [
            self._describe_host(plan, children.get(server.pid, []))
            for plan, server in zip(self._layout.hosts, self._servers, strict=True)
        ]
        self.hosts = [host for host in machines if host.name != BASTION]
        self.bastion = next((host for host in machines if host.name == BASTION), None)
        self._share_scratch(self.hosts)

    def _make_dirs(self) -> None:
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        self._sshd_dir.mkdir()
        self.node_state_dir.mkdir()
        self.launcher_state_dir.mkdir()
        self.project_dir.mkdir()
        if self.scratch_hosts:
            self.scratch_dir.mkdir()
            self.scratch_disk.mkdir()
        if self._user_name is not None:
            self.user = add_user(self._user_name, USER_HOMES / self._user_name)
        if not self.shared_disk:
            for host in self._layout.hosts:
                (self._disk(host) / "project").mkdir(parents=True)
                (self._disk(host) / "node-state").mkdir()

    def _generate_keys(self) -> None:
        # In-process, as ssh-keygen would write them: one ssh-keygen per host costs a
        # process start each, which is most of the start-up of a 253-host cluster.
        keys = [self.home / ".ssh" / "id_ed25519"]
        keys += [self._host_key(h) for h in self._layout.hosts]
        keys += [self.user.ssh_dir / "id_ed25519"] if self.user is not None else []
        for key in keys:
            private = Ed25519PrivateKey.generate()
            pem = private.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
            with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                file.write(pem)
            public = private.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
            key.with_suffix(".pub").write_bytes(public + f" {key.name}\n".encode())

    def _disk(self, host: _HostPlan) -> Path:
        """What the host has of its own, when there is no shared disk: kept across reboots."""
        return self._disks / host.name

    def _host_key(self, host: _HostPlan) -> Path:
        return self._sshd_dir / f"{host.name}_host_ed25519"

    def _pid_file(self, host: _HostPlan) -> Path:
        return self._sshd_dir / f"{host.name}.pid"

    def _sshd_config_path(self, host: _HostPlan) -> Path:
        return self._sshd_dir / f"{host.name}.conf"

    def _write_ssh_files(self) -> None:
        ssh_dir = self.home / ".ssh"
        client_key = ssh_dir / "id_ed25519"
        self._authorized_keys.write_text(client_key.with_suffix(".pub").read_text())
        self._etc_hosts.write_text(self._layout.etc_hosts())
        known_hosts: list[str] = []
        for host in self._layout.hosts:
            key_type, key_data = self._host_key(host).with_suffix(".pub").read_text().split()[:2]
            names = [host.name] + [i.address for i in host.interfaces]
            known_hosts.append(f"{','.join(names)} {key_type} {key_data}\n")
            alt_names = [f"[{name}]:{ALT_SSH_PORT}" for name in names]
            known_hosts.append(f"{','.join(alt_names)} {key_type} {key_data}\n")
            self._sshd_config_path(host).write_text(self._sshd_config(host))
        (ssh_dir / "known_hosts").write_text("".join(known_hosts))
        # ssh refuses a config file that others can write.
        self.ssh_config.touch(mode=0o600)
        self.ssh_config.write_text(self._client_config("root", ssh_dir))
        if self.user is not None:
            user_dir = self.user.ssh_dir
            (user_dir / "authorized_keys").write_text((user_dir / "id_ed25519.pub").read_text())
            (user_dir / "known_hosts").write_text("".join(known_hosts))
            (user_dir / "config").write_text(self._client_config(self.user.name, user_dir))
            for name in ("authorized_keys", "config"):
                (user_dir / name).chmod(0o600)
            hand_over_home(self.user)

    def _client_config(self, user: str, ssh_dir: Path) -> str:
        """An ssh config naming every host by its alias, for ``user`` with its key in ``ssh_dir``."""
        return "\n".join(
            f"Host {host.name}\n"
            f"    HostName {host.ssh_address}\n"
            + (f"    ProxyJump {host.proxy_jump}\n" if host.proxy_jump else "")
            + f"    User {user}\n"
            f"    IdentityFile {ssh_dir / 'id_ed25519'}\n"
            f"    UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
            "    StrictHostKeyChecking yes\n"
            for host in self._layout.hosts
        )

    def _sshd_config(self, host: _HostPlan) -> str:
        # No AcceptEnv: like a careful real server, sshd drops what the client sends.
        listen = [f"ListenAddress {i.address}:{port}\n" for i in host.interfaces for port in (SSH_PORT, ALT_SSH_PORT)]
        return (
            "".join(listen) + f"HostKey {self._host_key(host)}\n"
            f"PidFile {self._pid_file(host)}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The key files live in a pytest tmp dir whose modes sshd would reject.
            "StrictModes no\n"
            # Benchmarks open one connection per host and several sessions per connection.
            # The bastion keeps sshd's default (10:30:100), as a real one would.
             + ("MaxStartups 200\n" if host.max_startups else "") + "MaxSessions 100\n"
            "PrintMotd no\n"
            "LogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
            # Root's key file and state directory; another user (the second user) gets sshd's
            # defaults: ~/.ssh/authorized_keys, and no XDG_STATE_HOME. A Match block runs
            # to the end of the file, so it comes last.
            "Match User root\n"
            f"    AuthorizedKeysFile {self._authorized_keys}\n"
            f"    SetEnv XDG_STATE_HOME={self.node_state_dir}\n"
        )

    def _start_host(self, host: _HostPlan) -> subprocess.Popen[bytes]:
        enter_netns = ["ip", "netns", "exec", host.netns]
        # --kill-child: whatever kills unshare or the init takes the whole PID namespace
        # (tmux servers, torchrun, ...) with it.
        new_namespaces = ["unshare", "--uts", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc"]
        init = ["sh", "-c", HOST_INIT_SCRIPT, "sh", host.name, str(self._etc_hosts)]
        init += [str(self._sshd_config_path(host)), str(self.workdir)]
        disk = "" if self.shared_disk else str(self._disk(host))
        init += [disk, str(self.project_dir), str(self.node_state_dir), str(self._disks)]
        init += [str(path) for path in self._visible]
        self._pid_file(host).unlink(missing_ok=True)  # a rebooted host's sshd writes it anew
        with (self._sshd_dir / f"{host.name}.log").open("ab") as log:
            return subprocess.Popen(
                [*enter_netns, *new_namespaces, *init],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Keep a Ctrl-C meant for pytest from reaching the hosts; close() stops them.
                start_new_session=True,
            )

    def _wait_for_sshd(self, deadline: float, indices: Iterable[int]) -> None:
        waiting = [(self._layout.hosts[i], self._servers[i]) for i in indices]
        while waiting:
            still_waiting = []
            for host, server in waiting:
                if server.poll() is not None:
                    log = (self._sshd_dir / f"{host.name}.log").read_text(errors="replace")
                    raise ClusterError(f"{host.name}: sshd exited with {server.returncode}: {log.strip()}")
                # sshd writes its PidFile once its listening sockets are bound: no probe
                # connection needed, and this works for hosts only the bastion reaches.
                if not self._pid_file(host).exists() or not self._pid_file(host).read_text().endswith("\n"):
                    still_waiting.append((host, server))
            waiting = still_waiting
            if waiting and time.monotonic() > deadline:
                names = ", ".join(h.name for h, _ in waiting)
                raise ClusterError(f"sshd did not accept connections within {START_DEADLINE_S}s on {names}")
            if waiting:
                time.sleep(0.01)

    def _describe_host(self, plan: _HostPlan, children: list[int]) -> TestHost:
        """``children``: of the host's unshare, whose only child is the host's init."""
        if len(children) != 1:
            raise ClusterError(f"{plan.name}: expected one init under its unshare, found {children}")
        return TestHost(
            name=plan.name,
            address=plan.ssh_address,
            netns=plan.netns,
            link=plan.link,
            init_pid=children[0],
            pid_namespace=os.readlink(f"/proc/{children[0]}/ns/pid"),
            addresses=tuple(i.address for i in plan.interfaces),
            interfaces=tuple(i.name for i in plan.interfaces),
            links=tuple(i.link for i in plan.interfaces),
        )

    def _terminate_guests(self, inits: set[int]) -> None:
        """SIGTERM every process on the hosts, and give them a moment, before the SIGKILL.

        A shell SIGKILLed inside pyenv's ~/.bashrc leaves ~/.pyenv/shims/.pyenv-shim behind,
        and every later login on this machine then waits 60 s for that lock (seen here).
        """
        by_namespace = _pids_by_pid_namespace()  # one pass over /proc, not one per host
        machines = self._machines()
        guests = [pid for host in machines for pid in by_namespace.get(host.pid_namespace, []) if pid not in inits]
        for pid in guests:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GUEST_GRACE_S
        while time.monotonic() < deadline and any(_running(pid) for pid in guests):
            time.sleep(0.05)

    def _stop_servers(self) -> None:
        # Kill each init rather than its unshare: unshare then reaps the init and exits,
        # and we reap unshare. Killing unshare instead would orphan the init to PID 1,
        # which may reap it late (a second here, in a microVM) or never (some containers):
        # a zombie that "nothing remains" checks would trip over.
        if self.hosts:
            self._terminate_guests({h.init_pid for h in self._machines()})
            for host in self._machines():
                _kill_init(host)  # not a crashed host's: its pid may belong to another process now
        else:  # start failed before the hosts were described
            children = _children_by_parent()
            for pid in [pid for server in self._servers for pid in children.get(server.pid, [])]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_DEADLINE_S
        for server in self._servers:
            try:
                server.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def start_cluster(
    n: int,
    workdir: Path,
    *,
    shared_disk: bool = True,
    shared_scratch: Sequence[int] | bool = False,
    networks: Literal[1, 2] = 1,
    isolate_first_network: bool = False,
    bastion: bool = False,
    second_user: bool = False,
    repo: Path = REPO,
) -> Cluster:
    """Start ``n`` hosts ``h0``..``h<n-1>`` whose sshd accept connections on return.

    The options are described in the module's docstring: ``shared_disk=False`` (each host
    has its own ``project_dir`` and ``node_state_dir``), ``networks=2`` (a second network;
    ``isolate_first_network`` leaves it the only way between hosts), ``bastion`` (the
    hosts are reached only through a host ``bastion``) and ``second_user`` (a login user
    without root). ``repo``: the checkout the hosts must see, by default this one.
    """
    most = MAX_HOSTS - 1 if bastion else MAX_HOSTS
    if not 1 <= n <= most:
        raise ValueError(f"a cluster has 1 to {most} hosts, not {n}")
    if networks not in (1, 2):
        raise ValueError(f"a cluster has 1 or 2 networks, not {networks}")
    if isolate_first_network and networks != 2:
        raise ValueError("isolate_first_network needs networks=2")
    if bastion and networks != 1:
        raise ValueError("a cluster with a bastion has its own two networks; leave networks=1")
    scratch_hosts = (
        tuple(range(n)) if shared_scratch is True else () if shared_scratch is False else tuple(shared_scratch)
    )
    if not all(0 <= i < n for i in scratch_hosts):
        raise ValueError(f"shared_scratch names hosts 0 to {n - 1}, not {list(scratch_hosts)}")
    workdir = workdir.resolve()
    if not SAFE_PATH.fullmatch(str(workdir)):
        raise ValueError(f"workdir {workdir} must match {SAFE_PATH.pattern} (it goes into ssh configs)")
    if Path("/tmp").is_relative_to(workdir):
        raise ValueError(f"workdir {workdir} would make every host's /tmp shared")
    repo = repo.resolve()
    visible = _paths_under_tmp(repo, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with _REGISTRY.lock():
        _remove_stale_locked()  # first: it may clear this very workdir of a crashed run
        for name in WORKDIR_ENTRIES:
            if (workdir / name).exists() or (workdir / name).is_symlink():
                raise ClusterError(f"{workdir / name} already exists; give the cluster a fresh workdir")
        token = secrets.token_hex(3)
        subnets = [_free_subnet()]
        if networks == 2 or bastion:
            subnets.append(_free_subnet(also_taken=subnets))
        user = f"{NAME_PREFIX}-{token}-u" if second_user else None
        opened: list[Path] = []
        if second_user:
            opened = directories_to_open(paths_to_search(repo, USER_HOMES / user), _opened_by_live_clusters())
        _write_record(token, subnets, workdir, user=user, opened=opened)  # first: a crash then undoes it
        open_for_search(opened)
    layout = _Layout.plan(n, token, *subnets, isolate_first_network=isolate_first_network, bastion=bastion)
    cluster = Cluster(workdir, layout, shared_disk=shared_disk, visible=visible, user=user)
    cluster.scratch_hosts = scratch_hosts
    try:
        cluster._start()
    except BaseException:
        cluster.close()
        raise
    return cluster


def remove_stale_clusters() -> list[str]:
    """Delete what clusters whose creating process has exited left behind; their tokens."""
    with _REGISTRY.lock():
        return _remove_stale_locked()


def _paths_under_tmp(repo: Path, workdir: Path) -> list[Path]:
    """What the hosts must see under /tmp besides the workdir, which each host's private
    /tmp would hide: the checkout, the Python environment, the launcher it imports.

    A path that is /tmp itself cannot be: each host needs a /tmp of its own.
    """
    launcher = importlib.util.find_spec("launcher")
    candidates = [("the checkout", repo), ("the Python environment", Path(sys.prefix).resolve())]
    candidates += [("the Python installation", Path(sys.base_prefix).resolve())]
    candidates += [("the interpreter's directory", Path(sys.executable).resolve().parent)]
    if launcher is not None and launcher.origin is not None:
        candidates.append(("the launcher package's checkout", Path(launcher.origin).resolve().parent.parent))
    found: list[Path] = []
    for what, path in sorted(candidates, key=lambda candidate: candidate[1]):
        if path == TMP:
            raise ClusterError(
                f"{what} is /tmp itself, which each host of the test cluster replaces with a private one:"
                " move it into a directory of its own (say /tmp/launcher), or out of /tmp"
            )
        if path.is_relative_to(TMP) and not any(path.is_relative_to(kept) for kept in [workdir, *found]):
            found.append(path)
    return found


# --- registry of live clusters ---------------------------------------------------------


def _write_record(
    token: str, subnets: list[ipaddress.IPv4Network], workdir: Path, user: str | None, opened: list[Path]
) -> None:
    pid = os.getpid()
    record = {
        "pid": pid,
        "start_time": _start_time(pid),
        "subnet": str(subnets[0]),
        "subnets": [str(subnet) for subnet in subnets],
        "workdir": str(workdir),
        "user": user,
        "opened": [str(directory) for directory in opened],
    }
    _REGISTRY.write(token, record)


def _opened_by_live_clusters(but: str | None = None) -> set[str]:
    """Directories that live clusters (but the one of token ``but``) opened for their user."""
    opened: set[str] = set()
    for token, record in _REGISTRY.read_all().items():
        if token != but and _creator_alive(record):
            opened.update(name for name in record.get("opened", []) if isinstance(name, str))
    return opened


def _remove_user_locked(token: str) -> None:
    """Delete the second user of the cluster ``token`` and take back the search permission
    it was given (where no other live cluster still needs it)."""
    record = _REGISTRY.read_all().get(token, {})
    user = record.get("user")
    if isinstance(user, str):
        remove_user(user)
        _remove_path(USER_HOMES / user)
    opened = [name for name in record.get("opened", []) if isinstance(name, str)]
    close_for_search(opened, _opened_by_live_clusters(but=token))


def _creator_alive(record: dict[str, object]) -> bool:
    pid = record.get("pid")
    # The start time tells a live creator from an unrelated process that reused its pid.
    return isinstance(pid, int) and _start_time(pid) == record.get("start_time")


def _remove_stale_locked() -> list[str]:
    # List what exists before reading the records: a cluster starting concurrently writes
    # its record before creating anything, so nothing listed here can lack a live record.
    namespaces = _our_names(_list_netns())
    links = _our_names(_list_links())
    records = _REGISTRY.read_all()
    live = {token for token, record in records.items() if _creator_alive(record)}
    stale = {_token_of(name) for name in namespaces + links} | set(records)
    stale -= live
    if not stale:
        return []
    stale_namespaces = [ns for ns in namespaces if _token_of(ns) in stale]
    _kill_netns_processes(stale_namespaces)
    _delete_network(
        links=[link for link in links if _token_of(link) in stale],
        namespaces=stale_namespaces,
    )
    for token in stale:
        workdir = records.get(token, {}).get("workdir")
        if isinstance(workdir, str):
            for name in WORKDIR_ENTRIES:
                _remove_path(Path(workdir) / name)
        _remove_user_locked(token)
        _REGISTRY.remove(token)
    return sorted(stale)


def _free_subnet(also_taken: Sequence[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 clashing with no address, route, live cluster or ``also_taken``."""
    taken = _local_networks() + list(also_taken)
    for record in _REGISTRY.read_all().values():
        if not _creator_alive(record):
            continue
        subnets = record.get("subnets", [record.get("subnet")])
        for subnet in subnets if isinstance(subnets, list) else []:
            if isinstance(subnet, str):
                taken.append(ipaddress.IPv4Network(subnet))
    for _ in range(1000):
        candidate = ipaddress.IPv4Network(f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise ClusterError("no free 10.x.y.0/24 subnet")


def _local_networks() -> list[ipaddress.IPv4Network]:
    networks = []
    for entry in json.loads(_run_ip(["-4", "-j", "addr"])):
        for info in entry.get("addr_info", []):
            networks.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(_run_ip(["-4", "-j", "route", "show", "table", "all"])):
        dst = route.get("dst", "default")
        if dst != "default":  # the default route overlaps everything and takes nothing
            networks.append(ipaddress.IPv4Network(dst, strict=False))
    return networks


# --- network and processes -------------------------------------------------------------


def _our_names(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith(NAME_PREFIX + "-")]


def _token_of(name: str) -> str:
    return name.split("-")[1]


def _list_netns() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


def _list_links() -> list[str]:
    return [str(link["ifname"]) for link in json.loads(_run_ip(["-j", "link", "show"]))]


def _kill_netns_processes(namespaces: list[str]) -> None:
    pids: list[int] = []
    for ns in namespaces:
        result = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
        pids += [int(pid) for pid in result.stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Their parent is gone, so they may stay zombies under PID 1; a zombie holds no namespace.
    deadline = time.monotonic() + STOP_DEADLINE_S
    while any(_is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _delete_network(links: list[str], namespaces: list[str], groups: Sequence[int] = ()) -> None:
    # Delete the veths ourselves: a deleted namespace takes its half of a pair with it,
    # but asynchronously, so the root half would linger for a moment after we return.
    # A group goes in one step; the links by name then only find what it missed.
    # -force: go on past what a failed start never created.
    commands = [f"link del group {group}" for group in groups]
    commands += [f"link del {link}" for link in links if groups == () or _link_exists(link)]
    commands += [f"netns del {ns}" for ns in namespaces]
    if commands:
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )


def _init_alive(host: TestHost) -> bool:
    try:
        return os.readlink(f"/proc/{host.init_pid}/ns/pid") == host.pid_namespace and _running(host.init_pid)
    except OSError:
        return False


def _kill_init(host: TestHost) -> None:
    # The namespace check tells the host's init from a process that got its pid later.
    if _init_alive(host):
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.init_pid, signal.SIGKILL)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    try:
        return int(_stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def _is_running(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def _children_of(parent: int) -> list[int]:
    return _children_by_parent().get(parent, [])


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            children.setdefault(int(_stat_fields(pid)[1]), []).append(pid)
    return children


def _pids_by_pid_namespace() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for pid in _all_pids():
        with contextlib.suppress(OSError):  # it exited while we looked
            found.setdefault(os.readlink(f"/proc/{pid}/ns/pid"), []).append(pid)
    return found


def _command_line(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    if argv == [b""]:  # kernel thread or zombie: show its name, as ps does
        return "[" + Path(f"/proc/{pid}/comm").read_text().strip() + "]"
    return " ".join(arg.decode(errors="replace") for arg in argv)


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# --- running ip ------------------------------------------------------------------------


def _run_tc(args: list[str], netns: str | None = None, missing_ok: bool = False) -> None:
    """``tc`` (iproute2) in the root namespace, or in ``netns``."""
    argv = ["tc", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    said = result.stderr
    gone = missing_ok and ("No such file" in said or "Cannot delete qdisc with handle of zero" in said)
    if result.returncode != 0 and not gone:
        raise ClusterError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _run_ip(args: list[str]) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _start_ip_batch(commands: list[str], netns: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``ip -batch`` on ``commands`` (one process instead of one per command)."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stdin is not None  # we asked for a pipe
    process.stdin.write(("\n".join(commands) + "\n").encode())
    process.stdin.close()
    return process


def _run_ip_batch(commands: list[str]) -> None:
    _wait_all([_start_ip_batch(commands)], what="create cluster network")


def _wait_all(processes: list[subprocess.Popen[bytes]], what: str) -> None:
    failures = []
    for process in processes:
        # Not communicate(): _start_ip_batch already wrote and closed stdin.
        assert process.stderr is not None  # every caller asks for a pipe
        stderr = process.stderr.read()
        process.stderr.close()
        if process.wait() != 0:
            failures.append(stderr.decode(errors="replace").strip())
    if failures:
        raise ClusterError(f"{what} failed: {'; '.join(failures)}")


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds nothing; its parent reaps it in its own time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
