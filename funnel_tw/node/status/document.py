"""The status documents: ``GET /v0/serve-status`` and ``GET /v0/status``."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import ip_address
from typing import Any, Protocol, assert_never

from ..._version import __version__
from ...config import (
    HTTPSMounts,
    NodeConfig,
    PeerConfig,
    PluginHandler,
    TCPForward,
    TLSTerminatedTCP,
)
from ...overlay.interface import OverlayInterface
from ...overlay.stream import is_stream_address
from ...overlay.tunnel import display_endpoint
from ...overlay.userspace import tcp_status
from ...serve.model import ServeConfig
from ...tls.store import CertificateStore


class StatusSource(Protocol):
    """What the status documents read from a running node (NodeService provides it)."""

    @property
    def reactor(self) -> Any: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def serve(self) -> ServeConfig: ...
    @property
    def overlay(self) -> OverlayInterface: ...
    @property
    def store(self) -> CertificateStore: ...
    @property
    def peers_by_name(self) -> Mapping[str, PeerConfig]: ...

    def caller(self, overlay_ip: str) -> tuple[str, bool] | None:
        """The peer owning an overlay address and whether it is a funnel-ingress peer."""

    def renewal_status(self) -> dict[str, Any] | None:
        """The ACME issuer's state (failures, last error, next attempt); None otherwise."""

    def counters(self) -> dict[str, dict[str, int]]:
        """Counters by component: ingress, serve, tls, overlay."""


def serve_status(node: StatusSource) -> dict[str, Any]:
    """``tailscale serve status --json``: nothing more, nothing less."""
    return node.serve.to_json()


def _ports(node: StatusSource) -> list[dict[str, Any]]:
    """One entry per serve section, by port, [serve PORT] before its [serve HOST:PORT]s (which
    carry "host"): what it serves, as the config's handler says."""
    serve = node.serve
    out: list[dict[str, Any]] = []
    for port in sorted(node.config.serve, key=lambda p: (p.port, p.host is not None, p.host or "")):
        number = port.port
        sites = [site for site, key in serve.sites.items() if key == port.key]
        entry: dict[str, Any] = {"port": number}
        if port.host is not None:
            entry["host"] = port.host
        entry["funnel"] = any(serve.allow_funnel.get(site, False) for site in sites)
        if port.access is not None:
            entry["access"] = port.access  # each mount's own shows in its "Access"
        match port.handler:
            case HTTPSMounts():
                # the mounts the web side serves: none on a node without a hostname
                site = serve.web.get(sites[0]) if sites else None
                mounts = {path: h.to_json() for path, h in (site or {}).items()}
                entry.update(kind="https", mounts=mounts)
            case TCPForward(target=target, proxy_protocol=version):
                entry.update(kind="tcp-forward", target=target)
                if version:
                    entry["proxy_protocol"] = version
            case TLSTerminatedTCP(target=target, proxy_protocol=version):
                # with no hostname there is no certificate, and the port forwards TLS as it comes
                kind = "tls-terminated-tcp" if serve.hostnames else "tcp-forward"
                entry.update(kind=kind, target=target)
                if version:
                    entry["proxy_protocol"] = version
            case PluginHandler(name=name):
                entry.update(kind="handler", handler=name)
            case unreachable:
                assert_never(unreachable)
        out.append(entry)
    return out


def _peers(node: StatusSource, now: float) -> list[dict[str, Any]]:
    out = []
    for peer in node.overlay.device.peers:
        spec = node.peers_by_name.get(peer.name)
        last = peer.last_handshake
        out.append(
            {
                "name": peer.name,
                "endpoint": display_endpoint(peer.endpoint) if peer.endpoint else None,
                "transport": "tcp" if peer.endpoint and is_stream_address(peer.endpoint) else "udp",
                "allowed_ips": [str(n) for n in peer.allowed_ips],
                "funnel_ingress": bool(spec and spec.funnel_ingress),
                "last_handshake": last,
                "last_handshake_age": None if last is None else max(0.0, now - last),
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
            }
        )
    return out


def _certificates(node: StatusSource, now: float) -> list[dict[str, Any]]:
    installed = node.store.certificates()
    out: list[dict[str, Any]] = []
    for name in node.store.hostnames:
        cert = installed.get(name)
        if cert is None:
            out.append({"hostname": name, "source": None, "names": [], "not_after": None})
            continue
        not_after = cert.not_after
        out.append(
            {
                "hostname": name,
                "source": cert.source,
                "names": list(cert.names),
                "not_after": not_after.isoformat(),
                "expires_in": not_after.timestamp() - now,
            }
        )
    return out


def open_ingress_connections(node: StatusSource) -> int | None:
    """TCP connections from funnel-ingress peers to the peerAPI port: each one is a public
    client once the node has answered 101. None where the kernel owns TCP (network = tun)."""
    connections = node.overlay.tcp_connections()
    if connections is None:
        return None
    count = 0
    for _local, local_port, remote, _remote_port in connections:
        if local_port != node.config.peerapi_port:
            continue
        try:
            caller = node.caller(str(ip_address(remote)))
        except ValueError:
            continue
        if caller is not None and caller[1]:
            count += 1
    return count


def status_document(node: StatusSource, now: float) -> dict[str, Any]:
    """What ``GET /v0/status`` answers; ``now`` is the node's clock (reactor.seconds())."""
    config = node.config
    overlay = node.overlay
    return {
        "version": __version__,
        "hostnames": list(config.hostnames),
        "addresses": [str(a) for a in config.addresses],
        "network": config.network,
        # the userspace stack's caps (tcp-* keys); None where the kernel owns TCP (tun)
        "tcp": tcp_status(config.tcp) if config.network == "userspace" else None,
        "listen_port": overlay.port if overlay.tunnel is not None else None,
        "peerapi_port": config.peerapi_port,
        # state-dir/enrollment.json when the node joined a relay by token (funnel-tw join)
        "joined": str(config.enrollment) if config.enrollment is not None else None,
        "peers": _peers(node, now),
        "serve": serve_status(node),
        "ports": _ports(node),
        "certificates": _certificates(node, now),
        # the ACME issuer's state (failures, last error, next attempt); None for other sources
        "renewal": node.renewal_status(),
        "ingress": {"open": open_ingress_connections(node)},
        "counters": node.counters(),
        # handler plugins' own counters, gauges and refusals by reason, by serve section
        "plugins": node.plugin_status() if hasattr(node, "plugin_status") else {},
    }
