"""What an operator watches on a relay: Prometheus metrics, the access log, readiness, status.

The public listener already counts every outcome (``ConnectionLimits.counters``) and every
splice end counts its bytes; when a public connection ends, :meth:`RelayObserver.finished`
adds it to two small dicts (by node and outcome, by node and direction) and writes its access
log line. A scrape reads those, the open connections, and the overlay's per-node WireGuard
state: nothing is added per byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import IService

from .._version import __version__
from ..config import RelayConfig
from ..daemon.accesslog import AccessLog, AccessLogService, fields_line, iso_time
from ..daemon.metrics import MetricsService, wireguard_metrics
from ..overlay.interface import OverlayInterface
from ..overlay.tunnel import display_endpoint
from ..overlay.userspace import tcp_status
from ..web.hostport import format_host_port
from .balance import Balancer
from .fallback import FallbackAcceptor
from .health import Health
from .public import ConnectionLimits, PublicConnection
from .routes import Routes

SESSION_LIFETIME = 180.0  # WireGuard's Reject-After-Time: no handshake since is no session
NO_NODE = "-"  # a connection that never reached a node (no SNI, unknown name, refused...)


def bytes_in(conn: PublicConnection) -> int:
    """Bytes from the public client: before the splice (the hello, early data) and after."""
    return conn.early_in + conn.received


def bytes_out(conn: PublicConnection) -> int:
    """Bytes to the public client: what the node sent after its 101."""
    return conn.node_end.received if conn.node_end is not None else 0


class RelayObserver:
    """The relay's metrics registry, access log and per-node accounting."""

    def __init__(
        self,
        reactor: Any,
        config: RelayConfig,
        overlay: OverlayInterface,
        limits: ConnectionLimits,
        balancer: Balancer | None = None,
    ) -> None:
        self.reactor = reactor
        self.balancer = balancer or Balancer(Routes(config.nodes), Health())
        self.config = config
        self.overlay = overlay
        self.limits = limits
        self.connections: dict[tuple[str, str], int] = {}
        self.bytes: dict[tuple[str, str], int] = {}
        ops = config.ops
        self.access_log: AccessLog | None = None
        if ops.access_log is not None:
            self.access_log = AccessLog(ops.access_log, ops.access_log_format)
        self.registry = CollectorRegistry()
        self.registry.register(RelayCollector(self))
        self.fallback: FallbackAcceptor | None = None  # nodes' TCP fallback links (service.py)

    def services(self) -> list[IService]:
        out: list[IService] = []
        if self.access_log is not None:
            where = f"{self.config.path}: [relay] access-log"
            out.append(AccessLogService(self.access_log, where))
        if self.config.ops.metrics_listen is not None:
            out.append(
                MetricsService(
                    self.reactor, self.config.ops.metrics_listen, self.registry, self.not_ready
                )
            )
        return out

    def reopen(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    # --- sessions ---------------------------------------------------------------------------

    def sessions(self) -> list[str]:
        """The nodes with a WireGuard session up now."""
        now = self.reactor.seconds()
        return [
            peer.name
            for peer in self.overlay.device.peers
            if peer.last_handshake is not None and now - peer.last_handshake < SESSION_LIFETIME
        ]

    def not_ready(self) -> str | None:
        """/ready: None once at least one node has a WireGuard session with the relay."""
        return None if self.sessions() else "no WireGuard session with any node"

    # --- connections ------------------------------------------------------------------------

    def finished(self, conn: PublicConnection) -> None:
        node = conn.node_name or NO_NODE
        key = (node, conn.outcome)
        self.connections[key] = self.connections.get(key, 0) + 1
        received, sent = bytes_in(conn), bytes_out(conn)
        for direction, n in (("in", received), ("out", sent)):
            if n:
                self.bytes[node, direction] = self.bytes.get((node, direction), 0) + n
        if self.access_log is None:
            return
        now = self.reactor.seconds()
        sni, _, _ = conn.target.rpartition(":")
        self.access_log.write(
            {
                "time": iso_time(now),
                "client": format_host_port(*conn.source),
                "sni": sni or None,
                "node": conn.node_name or None,
                "outcome": conn.outcome,
                "bytes_in": received,
                "bytes_out": sent,
                "duration": round(max(0.0, now - conn.started), 6),
                "_time": now,
            },
            fields_line,
        )

    def live_bytes(self) -> dict[tuple[str, str], int]:
        """Bytes of the connections still open, by node and direction."""
        out: dict[tuple[str, str], int] = {}
        for conn in self.limits.open:
            node = conn.node_name or NO_NODE
            out[node, "in"] = out.get((node, "in"), 0) + bytes_in(conn)
            out[node, "out"] = out.get((node, "out"), 0) + bytes_out(conn)
        return out

    # --- funnel-tw status --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``GET /v0/status`` answers on the relay's local API."""
        now = self.reactor.seconds()
        by_name = {peer.name: peer for peer in self.overlay.device.peers}
        open_by_node: dict[str, int] = {}
        for conn in self.limits.open:
            node = conn.node_name or NO_NODE
            open_by_node[node] = open_by_node.get(node, 0) + 1
        health = self.balancer.health.document(now)
        nodes = []
        for spec in self.balancer.routes.nodes:  # enrolled nodes too (Routes.replace)
            peer = by_name.get(spec.name)
            last = peer.last_handshake if peer is not None else None
            nodes.append(
                {
                    "name": spec.name,
                    "enrolled": spec.name in self.config.enrolled,  # by token, not relay.ini
                    "hostnames": list(spec.hostnames),
                    "endpoint": display_endpoint(peer.endpoint)
                    if peer is not None and peer.endpoint
                    else None,
                    "last_handshake": last,
                    "last_handshake_age": None if last is None else max(0.0, now - last),
                    "session": last is not None and now - last < SESSION_LIFETIME,
                    "rx_bytes": peer.rx_bytes if peer is not None else 0,
                    "tx_bytes": peer.tx_bytes if peer is not None else 0,
                    "open_connections": open_by_node.get(spec.name, 0),
                    "health": health.get(spec.name),
                }
            )
        return {
            "version": __version__,
            "kind": "relay",
            "addresses": [str(a) for a in self.config.addresses],
            "listen_port": self.overlay.port if self.overlay.tunnel is not None else None,
            "public_address": self.config.public_address,
            "public_ports": list(self.config.public_ports),
            "tcp": tcp_status(self.config.tcp),  # the userspace stack's caps (tcp-* keys)
            "nodes": nodes,
            "pools": self.pools(),
            "tcp_fallback": None if self.fallback is None else self.fallback.status(),
            "connections": {
                "open": len(self.limits.open),
                "max": self.limits.max_total,
                "waiting_for_node": open_by_node.get(NO_NODE, 0),
            },
            "counters": {
                "public": dict(self.limits.counters),
                "overlay": self.overlay.stats(),
            },
        }

    def pools(self) -> list[dict[str, Any]]:
        """The names served by more than one node: policy and members in service."""
        balancer = self.balancer
        return [
            {
                "name": pool.key,
                "balance": balancer.policy(pool),
                "nodes": [n.name for n in pool.nodes],
                "in_service": [n.name for n in pool.nodes if balancer.health.usable(n.name)],
            }
            for pool in balancer.routes.pools()
            if len(pool.nodes) > 1
        ]


class RelayCollector:
    """Reads the relay's counters when Prometheus scrapes (names as in docs/operations.md)."""

    def __init__(self, observer: RelayObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        obs = self.observer
        connections = CounterMetricFamily(
            "funnel_relay_connections",
            "Public connections that ended, by node (- for none) and how they ended.",
            labels=["node", "outcome"],
        )
        for (node, outcome), n in sorted(obs.connections.items()):
            connections.add_metric([node, outcome], n)
        yield connections

        yield GaugeMetricFamily(
            "funnel_relay_active_connections",
            "Public connections open now.",
            value=len(obs.limits.open),
        )

        moved = dict(obs.bytes)
        for key, n in obs.live_bytes().items():
            moved[key] = moved.get(key, 0) + n
        relayed = CounterMetricFamily(
            "funnel_relay_bytes",
            "Bytes relayed, by node and direction (in: from public clients, out: to them).",
            labels=["node", "direction"],
        )
        for (name, direction), n in sorted(moved.items()):
            relayed.add_metric([name, direction], n)
        yield relayed

        events = CounterMetricFamily(
            "funnel_relay_events",
            "The public listener's counters: accepted, refusals and closes by reason.",
            labels=["event"],
        )
        for event, n in sorted(obs.limits.counters.items()):
            events.add_metric([event], n)
        yield events

        up = GaugeMetricFamily(
            "funnel_relay_node_up",
            "1 while a node is in service (its session is fresh and it takes ingress), else 0.",
            labels=["node"],
        )
        outages = CounterMetricFamily(
            "funnel_relay_node_outages",
            "Times a node went out of service (a failed probe or ingress, a stale session).",
            labels=["node"],
        )
        for name, state in sorted(obs.balancer.health.nodes.items()):
            up.add_metric([name], 1.0 if state.up else 0.0)
            outages.add_metric([name], state.outages)
        yield up
        yield outages

        yield from wireguard_metrics("funnel_relay", "node", obs.overlay, obs.overlay.stats())


def not_serving(relay: Any) -> str | None:
    """sd_notify READY=1 waits for this to be None: WireGuard and every public listener."""
    if not relay.running or relay.overlay.tunnel is None:
        return "WireGuard"
    wanted = len(relay.config.public_ports) + (relay.config.http_redirect_port is not None)
    if len(relay.ports) < wanted:
        return "public listeners"
    return None


def status_line(relay: Any) -> str:
    """The one-line STATUS= systemd shows: nodes with a session, open connections."""
    up = relay.observer.sessions()
    return (
        f"{len(up)} of {len(relay.config.nodes)} nodes with a WireGuard session; "
        f"{len(relay.limits.open)} open connections"
    )
