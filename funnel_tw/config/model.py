"""The objects a config file becomes: frozen attrs, compared whole in tests, read everywhere.

A serve port says what it serves as a tagged union (`PortHandler`): exactly one of HTTPS mounts,
a TCP forward, a TLS-terminated TCP forward, or a plugin handler, so that a consumer matches on
the type and no combination the file format forbids can be built.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "RELAY_TCP_DEFAULTS",
    "TCP_DEFAULTS",
    "AccessPolicy",
    "ClientLimits",
    "EnrollConfig",
    "HTTPSMounts",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "InspectConfig",
    "NodeConfig",
    "OpsConfig",
    "PeerConfig",
    "PluginHandler",
    "PortHandler",
    "RelayConfig",
    "RelayNode",
    "ServePort",
    "TCPBuffers",
    "TCPForward",
    "TLSConfig",
    "TLSTerminatedTCP",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface

DEFAULT_PROXY_TIMEOUT = 60.0
"""Seconds a proxied backend has to start answering before the client gets a 504."""


@attrs.frozen
class PeerConfig:
    """A WireGuard peer of the node ([peer NAME] in node.ini)."""

    name: str
    public_key: bytes
    endpoint: tuple[str, int] | None
    allowed_ips: tuple[IPNetwork, ...]
    persistent_keepalive: int
    funnel_ingress: bool
    preshared_key: bytes | None
    # the relay's public port for WireGuard over TLS when UDP fails (overlay/fallback.py)
    tcp_fallback: tuple[str, int] | None = None


@attrs.frozen
class TLSConfig:
    """Where the node's certificates come from ([tls] in node.ini)."""

    source: str
    cert_file: Path | None = None
    key_file: Path | None = None
    acme_directory: str | None = None
    acme_email: str | None = None
    acme_challenge: str = "tls-alpn-01"
    acme_dns_hook: Path | None = None
    acme_dns_plugin: str | None = None  # a DNS provider plugin instead of a hook
    acme_ca_file: Path | None = None


@attrs.frozen
class AccessPolicy:
    """``[access NAME]``: who on the internet may reach a port or mount (docs/access.md).

    Files are checked when the config loads and read again by serve/access when it starts."""

    name: str
    allow: tuple[IPNetwork, ...] = ()  # empty: every address (unless allow-file lists some)
    allow_file: Path | None = None
    deny: tuple[IPNetwork, ...] = ()
    basic_auth_file: Path | None = None
    bearer_tokens_file: Path | None = None
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret_file: Path | None = None
    oidc_allow: tuple[str, ...] = ()  # addresses, or "*@domain"
    oidc_session_lifetime: float = 86400.0
    forward_auth: str | None = None
    client_ca_file: Path | None = None
    rate_limit: float | None = None  # requests (or new connections) per second
    rate_burst: int | None = None
    max_request_body: int | None = None  # bytes

    @property
    def http_only(self) -> tuple[str, ...]:
        """The keys set that only an HTTP mount can apply (refused on other ports)."""
        keys = {
            "basic-auth-file": self.basic_auth_file,
            "bearer-tokens-file": self.bearer_tokens_file,
            "oidc-issuer": self.oidc_issuer,
            "forward-auth": self.forward_auth,
            "max-request-body": self.max_request_body,
        }
        return tuple(k for k, v in keys.items() if v is not None)


@attrs.frozen
class HTTPSMounts:
    """``/PATH = TARGET`` lines: HTTPS with the node's certificate, routed by path."""

    mounts: tuple[tuple[str, str], ...]  # (path, normalised target), in file order
    proxy_timeout: float = DEFAULT_PROXY_TIMEOUT
    # the mount paths whose backends get request header names with "_" (off by default)
    underscores: frozenset[str] = frozenset()
    # ``access /PATH = NAME``: a mount's own policy, replacing the port's
    access: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class TCPForward:
    """``tcp-forward = HOST:PORT``: the raw TCP bytes (TLS included) go to the backend."""

    target: str  # normalised HOST:PORT, [IPV6]:PORT
    proxy_protocol: int | None = None  # PROXY protocol version 1 or 2 sent first, or none


@attrs.frozen
class TLSTerminatedTCP:
    """``tls-terminated-tcp = HOST:PORT``: the node ends TLS, the plain bytes go to the backend."""

    target: str
    proxy_protocol: int | None = None


@attrs.frozen
class PluginHandler:
    """``handler = NAME``: an installed plugin; every other key of the section is its option."""

    name: str
    options: tuple[tuple[str, str], ...] = ()  # in file order
    # the options as the plugin's declared schema parsed them (None: not checked at load)
    parsed: Mapping[str, Any] | None = attrs.field(default=None, eq=False)
    line: int = attrs.field(default=0, eq=False)  # the section's line, for later errors


PortHandler = HTTPSMounts | TCPForward | TLSTerminatedTCP | PluginHandler


@attrs.frozen
class ServePort:
    """One TCP port of the node and the one thing it serves there: for every name of the node
    ([serve PORT], `host` None) or for one name or ``*.suffix`` ([serve HOST:PORT])."""

    port: int
    funnel: bool
    handler: PortHandler
    host: str | None = None  # lower case, covered by one of the node's hostnames
    access: str | None = None  # ``access = NAME``: the [access NAME] of every mount / connection

    @property
    def key(self) -> int | str:
        """The section's key: the port of [serve PORT], "host:port" of [serve HOST:PORT]."""
        return self.port if self.host is None else f"{self.host}:{self.port}"


@attrs.frozen
class OpsConfig:
    """How a daemon is watched ([node] / [relay] metrics-listen, access-log, access-log-format)."""

    metrics_listen: tuple[str, int] | None = None  # (IP address, port); port 0: any free one
    access_log: Path | None = None  # Path("-") for standard output
    access_log_format: str = "json"


@attrs.frozen
class TCPBuffers:
    """[node] / [relay] tcp-receive-buffer-max, tcp-send-buffer-max, tcp-memory (bytes),
    tcp-max-connections, tcp-path-memory (seconds), tcp-timestamps and tcp-congestion: the
    userspace TCP stack's caps and choices. The defaults are netstack's own (tcp.RECEIVE_BUFFER_MAX,
    tcp.SEND_BUFFER_MAX, stack.RECEIVE_MEMORY, stack.MAX_CONNECTIONS, paths.PATH_LIFETIME,
    Stack's timestamps and congestion), written out here as config sits below it."""

    receive_buffer_max: int = 8 << 20  # what one receive window may autotune up to
    send_buffer_max: int = 12 << 20  # what one send buffer may grow to (2 x cwnd)
    memory: int = 256 << 20  # the growth of all receive windows together
    connections: int = 16384  # connections at once (stack.MAX_CONNECTIONS)
    # seconds what a connection learned of the path to a peer is kept for the next one
    # (netstack/paths.py, Careful Resume); 0: off
    path_memory: float = 600.0
    # RFC 7323 timestamps offered and taken (netstack/tcp/timestamps.py), as Linux does
    timestamps: bool = True
    # the senders' congestion control, one of CONGESTION (netstack/tcp/cubic.py or bbr.py)
    congestion: str = "cubic"


CONGESTION = ("cubic", "bbr")  # netstack's stack.CONGESTION: the default first
TCP_DEFAULTS = TCPBuffers()  # frozen: one instance serves every default
# The relay's windows toward its nodes may grow twice as far: what it receives there waits for
# a public client on the same machine's CPU, and a window that closes while that client
# catches up costs a round trip to the node to reopen (issue 12: +10 % at 50 ms, the same at 0)
RELAY_TCP_DEFAULTS = TCPBuffers(receive_buffer_max=16 << 20)


@attrs.frozen
class InspectConfig:
    """The request inspector ([node] inspect-*, docs/inspector.md): where its page and API
    listen, which mounts it captures (empty: all), how many requests it keeps, how much of
    each body, and whether secrets are shown."""

    listen: tuple[str, int]  # (IP address, port)
    mounts: tuple[str, ...] = ()
    keep: int = 500
    body_limit: int = 64 * 1024
    show_secrets: bool = False


@attrs.frozen
class ClientLimits:
    """[node] deadlines for public clients (seconds) and a request body's minimum rate."""

    tls_handshake_timeout: float = 10.0
    http_head_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_body_min_rate: int = 500  # bytes a second, over each http-body-timeout window


@attrs.frozen
class NodeConfig:
    """A parsed node.ini."""

    path: Path
    private_key: bytes
    listen_port: int
    addresses: tuple[IPInterface, ...]
    hostnames: tuple[str, ...]
    peerapi_port: int
    mtu: int
    network: str
    state_dir: Path
    peers: tuple[PeerConfig, ...]
    tls: TLSConfig
    serve: tuple[ServePort, ...]
    warnings: tuple[str, ...] = ()  # ConfigWarning lines: loads, but likely not what was meant
    ops: OpsConfig = OpsConfig()  # metrics-listen, access-log, access-log-format
    access: tuple[AccessPolicy, ...] = ()  # [access NAME] sections
    limits: ClientLimits = ClientLimits()
    inspect: InspectConfig | None = None  # [node] inspect-listen; None: no inspector
    enrollment: Path | None = None  # state-dir/enrollment.json, when the node joined a relay
    tcp: TCPBuffers = TCPBuffers()  # tcp-* keys (network = userspace only)


@attrs.frozen
class RelayNode:
    """A node the relay forwards to ([node NAME] in relay.ini)."""

    name: str
    public_key: bytes
    allowed_ips: tuple[IPNetwork, ...]
    hostnames: tuple[str, ...]
    peerapi: tuple[IPAddress, int]
    endpoint: tuple[str, int] | None
    persistent_keepalive: int
    preshared_key: bytes | None


@attrs.frozen
class EnrollConfig:
    """[relay] enroll-port, public-endpoint, node-addresses: nodes join with a token."""

    port: int  # TCP, on public-address; 0: any free port (tests)
    public_endpoint: tuple[str, int]  # the relay's WireGuard endpoint as nodes dial it
    node_addresses: tuple[IPNetwork, ...]  # the pools enrolled nodes get addresses from

    @property
    def address(self) -> tuple[str, int]:
        """Where nodes reach the enroll listener: public-endpoint's host, enroll-port."""
        return self.public_endpoint[0], self.port


@attrs.frozen
class RelayConfig:
    """A parsed relay.ini."""

    path: Path
    private_key: bytes
    listen_port: int
    addresses: tuple[IPInterface, ...]
    public_address: str
    public_ports: tuple[int, ...]
    client_hello_timeout: float
    max_connections: int
    mtu: int
    nodes: tuple[RelayNode, ...]
    max_connections_per_ip: int = 256
    idle_timeout: float = 600.0
    http_redirect_port: int | None = None
    shutdown_timeout: float = 10.0
    state_dir: Path = Path("state")  # learned node endpoints, kept across restarts
    ingress_connect_timeout: float = 5.0  # reach the node and get its answer within this long
    tcp_fallback: bool = True  # nodes may carry WireGuard over TLS to a public port (ALPN)
    warnings: tuple[str, ...] = ()  # ConfigWarning lines: loads, but likely not what was meant
    ops: OpsConfig = OpsConfig()  # metrics-listen, access-log, access-log-format
    balance: str = "round-robin"  # how a pool's nodes share new connections (relay/balance.py)
    balance_by_name: tuple[tuple[str, str], ...] = ()  # `balance NAME = POLICY` keys
    enroll: EnrollConfig | None = None  # off unless enroll-port is set
    # the names among ``nodes`` that enrolled with a token (state-dir/enrolled-nodes.json)
    enrolled: frozenset[str] = frozenset()
    tcp: TCPBuffers = RELAY_TCP_DEFAULTS  # tcp-* keys
