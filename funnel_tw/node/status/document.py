"""The status documents: ``GET /v0/serve-status`` and ``GET /v0/status``."""

from __future__ import annotations

from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...overlay.tunnel import display_endpoint

if TYPE_CHECKING:
    from ..service import NodeService


def serve_status(node: NodeService) -> dict[str, Any]:
    """``tailscale serve status --json``: nothing more, nothing less."""
    return node.serve.to_json()


def _ports(node: NodeService) -> list[dict[str, Any]]:
    serve = node.serve
    out: list[dict[str, Any]] = []
    for port, handler in sorted(serve.tcp.items()):
        entry: dict[str, Any] = {
            "port": port,
            "funnel": any(serve.allow_funnel.get(f"{h}:{port}", False) for h in serve.hostnames),
        }
        if handler.https:
            entry["kind"] = "https"
            mounts = next(
                (serve.web[f"{h}:{port}"] for h in serve.hostnames if f"{h}:{port}" in serve.web),
                {},
            )
            entry["mounts"] = {path: h.to_json() for path, h in mounts.items()}
        elif handler.terminate_tls is not None:
            entry["kind"] = "tls-terminated-tcp"
            entry["target"] = handler.tcp_forward
        elif handler.tcp_forward is not None:
            entry["kind"] = "tcp-forward"
            entry["target"] = handler.tcp_forward
        elif handler.handler is not None:
            entry["kind"] = "handler"
            entry["handler"] = handler.handler
        if handler.proxy_protocol:
            entry["proxy_protocol"] = handler.proxy_protocol
        out.append(entry)
    return out


def _peers(node: NodeService, now: float) -> list[dict[str, Any]]:
    out = []
    for peer in node.overlay.device.peers:
        spec = node.peers_by_name.get(peer.name)
        last = peer.last_handshake
        out.append(
            {
                "name": peer.name,
                "endpoint": display_endpoint(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [str(n) for n in peer.allowed_ips],
                "funnel_ingress": bool(spec and spec.funnel_ingress),
                "last_handshake": last,
                "last_handshake_age": None if last is None else max(0.0, now - last),
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
            }
        )
    return out


def _certificates(node: NodeService, now: float) -> list[dict[str, Any]]:
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


def open_ingress_connections(node: NodeService) -> int | None:
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


def status_document(node: NodeService, now: float) -> dict[str, Any]:
    """What ``GET /v0/status`` answers; ``now`` is the node's clock (reactor.seconds())."""
    config = node.config
    overlay = node.overlay
    return {
        "version": __version__,
        "hostnames": list(config.hostnames),
        "addresses": [str(a) for a in config.addresses],
        "network": config.network,
        "listen_port": overlay.port if overlay.tunnel is not None else None,
        "peerapi_port": config.peerapi_port,
        "peers": _peers(node, now),
        "serve": serve_status(node),
        "ports": _ports(node),
        "certificates": _certificates(node, now),
        # the ACME issuer's state (failures, last error, next attempt); None for other sources
        "renewal": node.certificates.status() if hasattr(node.certificates, "status") else None,
        "ingress": {"open": open_ingress_connections(node)},
        "counters": {
            "ingress": dict(node.ingress.counters),
            "serve": dict(node.dispatcher.counters),
            "tls": dict(node.store.counters),
            "overlay": overlay.stats(),
        },
    }
