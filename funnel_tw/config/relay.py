"""The relay.ini schema: [relay] and [node NAME] into a RelayConfig."""

from __future__ import annotations

import os

import attrs

from funnel_tw.keys import decode_key

from . import values
from .ini import IniFile, Section, group_sections
from .interface import check_peers, wireguard_keys
from .model import RelayConfig, RelayNode
from .ops import OPS_KEYS, ops_config

__all__ = ["load_relay_config", "relay_config"]

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
    "tcp-fallback",
    "balance",
    *OPS_KEYS,
)
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
    # several [node] sections may claim one name: they form a pool (relay/balance.py)
    claimed = {name for _, node in pairs for name in node.hostnames}
    by_name: dict[str, str] = {}
    if groups["relay"]:
        by_name = _balance_by_name(groups["relay"][0], claimed if all(nodes) else None)
    file.check()
    assert relay is not None  # else an error was recorded
    return attrs.evolve(
        relay,
        nodes=tuple(n for n in nodes if n),
        warnings=file.warnings,
        balance_by_name=tuple(sorted(by_name.items())),
    )


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
    if redirect_port is not None and redirect_port in public_ports:
        section.error("http-redirect-port", "is also one of public-ports")
    ops = ops_config(section)
    if ops.metrics_listen is not None and ops.metrics_listen[1] in (
        *public_ports,
        redirect_port,
    ):
        section.error("metrics-listen", f"port {ops.metrics_listen[1]} is a public port")
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
        balance=balance,
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
