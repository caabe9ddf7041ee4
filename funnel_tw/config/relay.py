"""The relay.ini schema: [relay] and [node NAME] into a RelayConfig."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from ipaddress import ip_network
from typing import Any

import attrs

from funnel_tw.keys import decode_key

from . import values
from .enrolled import RELAY_ENROLLED, read_enrolled_nodes, relay_node
from .ini import IniFile, Section, group_sections
from .interface import TCP_KEYS, check_peers, tcp_buffers, wireguard_keys
from .model import RELAY_TCP_DEFAULTS, EnrollConfig, IPNetwork, RelayConfig, RelayNode
from .ops import OPS_KEYS, ops_config

__all__ = ["load_relay_config", "relay_config", "with_enrolled"]

_RELAY_KEYS = (
    "private-key",
    "private-key-file",
    "listen-port",
    "address",
    "public-address",
    "public-ports",
    "client-hello-timeout",
    "ingress-connect-timeout",
    "max-connections",
    "max-connections-per-ip",
    "idle-timeout",
    "http-redirect-port",
    "shutdown-timeout",
    "state-dir",
    "mtu",
    *TCP_KEYS,
    "tcp-fallback",
    "balance",
    *OPS_KEYS,
    "enroll-port",
    "public-endpoint",
    "node-addresses",
)
_ENROLL_KEYS = ("public-endpoint", "node-addresses")
BALANCE = ("round-robin", "least-connections", "first")  # relay/balance.py implements them
_RELAY_NODE_KEYS = (
    "public-key",
    "allowed-ips",
    "hostnames",
    "peerapi",
    "endpoint",
    "persistent-keepalive",
    "preshared-key",
    "preshared-key-file",
)


def load_relay_config(path: str | os.PathLike[str]) -> RelayConfig:
    """Read relay.ini; raise ConfigError listing every problem found."""
    return relay_config(IniFile(path))


def relay_config(file: IniFile) -> RelayConfig:
    """The RelayConfig of a file already read; ConfigError listing every problem found."""
    groups = group_sections(file, singles=("relay",), named=("node",), required="relay")
    relay = _relay(groups["relay"][0]) if groups["relay"] else None
    nodes = [_relay_node(section) for section in groups["node"]]
    pairs = [(s, n) for s, n in zip(groups["node"], nodes, strict=True) if n]
    if relay is not None:
        check_peers([(s, n.public_key, n.allowed_ips) for s, n in pairs], relay.private_key)
    # several [node] sections may claim one name: they form a pool (relay/balance.py), and so
    # may nodes enrolled with a token (state-dir/enrolled-nodes.json)
    claimed = {name for _, node in pairs for name in node.hostnames}
    records = _enrolled_records(groups["relay"][0], relay) if relay is not None else []
    claimed.update(h for record in records for h in record["hostnames"])
    by_name: dict[str, str] = {}
    if groups["relay"]:
        by_name = _balance_by_name(groups["relay"][0], claimed if all(nodes) else None)
    file.check()
    assert relay is not None  # else an error was recorded
    config = attrs.evolve(
        relay,
        nodes=tuple(n for n in nodes if n),
        balance_by_name=tuple(sorted(by_name.items())),
    )
    # the enrolled nodes join the [node] sections; one that clashes with a section is left
    # out, with a warning
    config, skipped = with_enrolled(config, records)
    for why in skipped:
        groups["relay"][0].warn("state-dir", f"{config.state_dir / RELAY_ENROLLED}: {why}")
    return attrs.evolve(config, warnings=file.warnings)


def _enrolled_records(section: Section, relay: RelayConfig) -> list[dict[str, Any]]:
    """The records of state-dir/enrolled-nodes.json ([] when damaged: the error is recorded)."""
    path = relay.state_dir / RELAY_ENROLLED
    try:
        return read_enrolled_nodes(path)
    except ValueError as e:
        section.error("state-dir", f"{path}: {e} (written by the enroll listener; restore it)")
        return []


def with_enrolled(
    config: RelayConfig, records: Sequence[Mapping[str, Any]]
) -> tuple[RelayConfig, list[str]]:
    """``config`` with its [node] sections and the enrolled ``records`` (replacing the enrolled
    nodes it had): the effective node list. A record that clashes with a section (name, key,
    network) is left out; the reasons are returned. Hostnames may be shared: a pool."""
    static = [n for n in config.nodes if n.name not in config.enrolled]
    taken = _Taken()
    for a in config.addresses:
        taken.networks.add(ip_network(a.ip))
    for n in static:
        taken.add(n)
    added: list[RelayNode] = []
    skipped: list[str] = []
    for record in records:
        node = relay_node(record)
        clash = taken.clash(node)
        if clash:
            skipped.append(f"enrolled node {node.name} left out: {clash}")
            continue
        taken.add(node)
        added.append(node)
    new = attrs.evolve(config, nodes=(*static, *added), enrolled=frozenset(n.name for n in added))
    return new, skipped


@attrs.define
class _Taken:
    """What the nodes so far hold: a node's clash check is O(1) but for networks wider than
    one address, which are few (a relay has thousands of enrolled single addresses)."""

    names: set[str] = attrs.Factory(set)
    keys: set[bytes] = attrs.Factory(set)
    networks: set[IPNetwork] = attrs.Factory(set)  # single addresses
    wide: list[IPNetwork] = attrs.Factory(list)

    def add(self, node: RelayNode) -> None:
        self.names.add(node.name)
        self.keys.add(node.public_key)
        for net in node.allowed_ips:
            if net.num_addresses == 1:
                self.networks.add(net)
            else:
                self.wide.append(net)

    def overlaps(self, net: IPNetwork) -> bool:
        if net in self.networks or any(net.overlaps(w) for w in self.wide):
            return True
        return net.num_addresses > 1 and any(n.overlaps(net) for n in self.networks)

    def clash(self, node: RelayNode) -> str:
        """Why ``node`` cannot join the nodes already there ("" when it can)."""
        if node.name in self.names:
            return "its name is taken"
        if node.public_key in self.keys:
            return "its key is another node's"
        overlap = [str(a) for a in node.allowed_ips if self.overlaps(a)]
        if overlap:
            return f"addresses {', '.join(overlap)} are another node's or the relay's"
        return ""


def _enroll(section: Section, taken: dict[str, int | None]) -> EnrollConfig | None:
    """enroll-port, public-endpoint and node-addresses: all three, or none."""
    port = section.opt("enroll-port", values.listen_port, None)
    endpoint = section.opt("public-endpoint", values.endpoint, None)
    pools = section.opt("node-addresses", values.networks, None)
    if port is None:
        for key in _ENROLL_KEYS:
            if key in section.values:
                section.error(key, "is only used with enroll-port")
        return None
    for key in _ENROLL_KEYS:
        if key not in section.values:
            section.error("enroll-port", f"needs {key} too")
    for what, used in taken.items():
        if port and port == used:
            section.error("enroll-port", f"port {port} is also {what}")
    for pool in pools or ():
        if pool.max_prefixlen - pool.prefixlen < 2:
            section.error("node-addresses", f"{pool} is too small to assign addresses from")
    if endpoint is None or pools is None:
        return None
    return EnrollConfig(port=port, public_endpoint=endpoint, node_addresses=pools)


def _balance_by_name(section: Section, claimed: set[str] | None) -> dict[str, str]:
    """``balance NAME = POLICY`` keys: one pool's policy (NAME as a [node] hostnames lists it).

    ``claimed`` is None when a [node] section had errors (then names are not checked).
    """
    out: dict[str, str] = {}
    for key in section.values:
        kind, _, name = key.partition(" ")
        if kind != "balance" or not name.strip():
            continue
        policy = section.opt(key, values.choice(*BALANCE), None)
        try:
            name = values.hostname(name.strip())
        except ValueError as e:
            section.error(key, str(e))
            continue
        if claimed is not None and name not in claimed:
            section.error(key, f"no [node] section lists {name} in its hostnames")
        elif policy is not None:
            out[name] = policy
    return out


def _relay(section: Section) -> RelayConfig | None:
    section.reject_unknown((*_RELAY_KEYS, *(k for k in section.values if k.startswith("balance "))))
    wireguard = wireguard_keys(section)
    public_address = section.opt("public-address", values.ip_address_text, "0.0.0.0")
    public_ports = section.opt("public-ports", values.ports, (443,))
    timeout = section.opt("client-hello-timeout", values.seconds, 10.0)
    ingress_timeout = section.opt("ingress-connect-timeout", values.seconds, 5.0)
    max_connections = section.opt(
        "max-connections", lambda v: values.integer(v, 1, 1_000_000), 10000
    )
    per_ip = section.opt("max-connections-per-ip", lambda v: values.integer(v, 1, 1_000_000), 256)
    idle_timeout = section.opt("idle-timeout", values.seconds, 600.0)
    redirect_port = section.opt("http-redirect-port", values.port, None)
    shutdown_timeout = section.opt("shutdown-timeout", values.seconds, 10.0)
    tcp_fallback = section.opt("tcp-fallback", values.boolean, True)
    relay_state = section.opt("state-dir", section.path, section.path("state"))
    balance = section.opt("balance", values.choice(*BALANCE), "round-robin")
    tcp = tcp_buffers(section, default=RELAY_TCP_DEFAULTS)  # always the userspace stack
    if "tcp-max-connections" not in section.values:
        # each spliced public connection is one overlay connection to a node: unless told
        # otherwise, the stack holds as many as max-connections admits, and some more
        tcp = attrs.evolve(tcp, connections=max(tcp.connections, max_connections + 1024))
    if redirect_port is not None and redirect_port in public_ports:
        section.error("http-redirect-port", "is also one of public-ports")
    ops = ops_config(section)
    if ops.metrics_listen is not None and ops.metrics_listen[1] in (
        *public_ports,
        redirect_port,
    ):
        section.error("metrics-listen", f"port {ops.metrics_listen[1]} is a public port")
    taken: dict[str, int | None] = {f"public port {p}": p for p in public_ports}
    taken["http-redirect-port"] = redirect_port
    taken["metrics-listen's port"] = ops.metrics_listen[1] if ops.metrics_listen else None
    enroll = _enroll(section, taken)
    if wireguard is None:
        return None
    return RelayConfig(
        path=section.file.path,
        private_key=wireguard.private_key,
        listen_port=wireguard.listen_port,
        addresses=wireguard.addresses,
        public_address=public_address,
        public_ports=public_ports,
        client_hello_timeout=timeout,
        max_connections=max_connections,
        mtu=wireguard.mtu,
        nodes=(),
        max_connections_per_ip=per_ip,
        idle_timeout=idle_timeout,
        http_redirect_port=redirect_port,
        shutdown_timeout=shutdown_timeout,
        state_dir=relay_state,
        ingress_connect_timeout=ingress_timeout,
        tcp_fallback=tcp_fallback,
        ops=ops,
        enroll=enroll,
        balance=balance,
        tcp=tcp,
    )


def _relay_node(section: Section) -> RelayNode | None:
    section.reject_unknown(_RELAY_NODE_KEYS)
    key = section.req("public-key", decode_key)
    allowed_ips = section.req("allowed-ips", values.networks)
    hostnames = section.req("hostnames", values.some_hostnames)
    peerapi = section.req("peerapi", values.peerapi)
    endpoint = section.opt("endpoint", values.endpoint, None)
    keepalive = section.opt("persistent-keepalive", values.keepalive, 0)
    preshared_key = section.secret("preshared-key", required=False)
    if key is None or allowed_ips is None or hostnames is None or peerapi is None:
        return None
    if not any(peerapi[0] in network for network in allowed_ips):
        section.error("peerapi", f"{peerapi[0]} is not inside allowed-ips")
    return RelayNode(
        name=section.name,
        public_key=key,
        allowed_ips=allowed_ips,
        hostnames=hostnames,
        peerapi=peerapi,
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        preshared_key=preshared_key,
    )
