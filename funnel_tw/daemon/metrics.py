"""The metrics endpoint: ``metrics-listen = HOST:PORT`` serves Prometheus and probes.

    GET /metrics   Prometheus text format (OpenMetrics when the scraper asks for it)
    GET /ready     200 when the daemon has at least one WireGuard session up, else 503:
                   for load balancers and Kubernetes readiness probes
    GET /healthz   200 while the process serves requests (liveness)

Each daemon has its own :class:`prometheus_client.CollectorRegistry` (never the global one:
two daemons in one process, as in the tests, keep their numbers apart). The daemons register
a custom collector that reads the counters they keep anyway when scraped, so a scrape costs
work and a request on the data path costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from ..overlay.interface import OverlayInterface
from ..web.hostport import format_host_port
from .reload import Reloader

log = Logger()

TEXT_FORMAT = b"text/plain; version=0.0.4; charset=utf-8"
IDLE_TIMEOUT = 30


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        request.setHeader(b"cache-control", b"no-store")
        if "application/openmetrics-text" in accept:
            request.setHeader(b"content-type", OPENMETRICS.encode())
            text: bytes = generate_openmetrics(self.registry)
            return text
        request.setHeader(b"content-type", TEXT_FORMAT)
        body: bytes = generate_latest(self.registry)
        return body


class _Probe(Resource):
    isLeaf = True

    def __init__(self, check: Callable[[], str | None]) -> None:
        super().__init__()
        self.check = check

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        why = self.check()
        if why is None:
            return b"ok\n"
        request.setResponseCode(http.SERVICE_UNAVAILABLE)
        return why.encode() + b"\n"


class MetricsSite(Site):
    """/metrics, /ready, /healthz; no access log, no library chatter."""

    noisy = False

    def __init__(
        self, registry: CollectorRegistry, not_ready: Callable[[], str | None], reactor: Any
    ) -> None:
        root = Resource()
        root.putChild(b"metrics", _Metrics(registry))
        root.putChild(b"ready", _Probe(not_ready))
        root.putChild(b"healthz", _Probe(lambda: None))
        super().__init__(root, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


class MetricsService(Service):
    """Listens on ``metrics-listen`` while the daemon runs; a port in use is one clear line."""

    def __init__(
        self,
        reactor: Any,
        address: tuple[str, int],
        registry: CollectorRegistry,
        not_ready: Callable[[], str | None],
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.site = MetricsSite(registry, not_ready, reactor)
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        host, port = self.address
        try:
            self.port = self.reactor.listenTCP(port, self.site, interface=host)
        except OSError as e:  # CannotListenError: in use, or not an address of this host
            raise SystemExit(
                f"funnel-tw: metrics-listen {format_host_port(host, port)}: cannot listen: "
                f"{getattr(e, 'socketError', None) or e}"
            ) from None
        super().startService()
        log.info("metrics on http://{where}/metrics", where=self.where())

    def where(self) -> str:
        host, port = self.address
        if self.port is not None:
            port = int(getattr(self.port.getHost(), "port", port))
        return format_host_port(host, port)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return port.stopListening()


def wireguard_metrics(
    prefix: str, label: str, overlay: OverlayInterface, stats: dict[str, int]
) -> list[Metric]:
    """Per-peer handshake time and bytes, and the overlay's drops by reason."""
    handshake = GaugeMetricFamily(
        f"{prefix}_{label}_last_handshake_timestamp_seconds",
        f"When the last WireGuard handshake with each {label} completed (Unix time; 0: never).",
        labels=[label],
    )
    received = CounterMetricFamily(
        f"{prefix}_wireguard_received_bytes",
        f"Bytes received from each {label} over WireGuard.",
        labels=[label],
    )
    sent = CounterMetricFamily(
        f"{prefix}_wireguard_sent_bytes",
        f"Bytes sent to each {label} over WireGuard.",
        labels=[label],
    )
    for peer in overlay.device.peers:
        handshake.add_metric([peer.name], peer.last_handshake or 0.0)
        received.add_metric([peer.name], peer.rx_bytes)
        sent.add_metric([peer.name], peer.tx_bytes)
    drops = CounterMetricFamily(
        f"{prefix}_wireguard_drops",
        "Packets dropped by WireGuard, the packet filter or the TCP/IP stack, by reason.",
        labels=["reason"],
    )
    for key, n in sorted(stats.items()):
        if key.startswith("drop_"):
            drops.add_metric([key.removeprefix("drop_")], n)
    handshakes = CounterMetricFamily(
        f"{prefix}_wireguard_handshakes", "WireGuard handshakes completed."
    )
    handshakes.add_metric([], stats.get("handshakes", 0))
    errors = CounterMetricFamily(
        f"{prefix}_overlay_errors",
        "Bugs met on the userspace overlay's data path: a protocol that raised (app: its "
        "connection reset) or the TCP/IP stack raising on a packet (stack: the packet dropped).",
        labels=["kind"],
    )
    for kind in ("app", "stack"):
        if f"{kind}_errors" in stats:  # not with network = tun: the kernel has the TCP
            errors.add_metric([kind], stats[f"{kind}_errors"])
    return [handshake, received, sent, drops, handshakes, errors, *tcp_metrics(prefix, stats)]


# the userspace stack's stats that are levels, not counts (netstack/stack.py: Stack.stats)
TCP_GAUGES = {
    "tcp_connections": "TCP connections open in the userspace stack.",
    "tcp_time_wait": "TCP connections in TIME-WAIT.",
    "tcp_rcvbuf_granted": "Bytes of receive window growth granted now (bounded by tcp-memory).",
    "tcp_paths_remembered": "Peer addresses whose path a connection left for the next one "
    "(tcp-path-memory).",
}


def tcp_metrics(prefix: str, stats: dict[str, int]) -> list[Metric]:
    """The userspace TCP stack's event counters (retransmissions, probes, Careful Resume's
    jumps and retreats...: docs/netstack.md, Counters) and its levels; none with
    ``network = tun``, where the kernel has the TCP."""
    if "tcp_connections" not in stats:
        return []
    events = CounterMetricFamily(
        f"{prefix}_tcp_events",
        "Events of the userspace TCP stack, by kind (tcp_rto, tcp_fast_retransmits, "
        "tcp_resume_jumps...).",
        labels=["event"],
    )
    for key, n in sorted(stats.items()):
        if key.startswith("tcp_") and key not in TCP_GAUGES:
            events.add_metric([key.removeprefix("tcp_")], n)
    gauges = []
    for key, text in TCP_GAUGES.items():
        gauge = GaugeMetricFamily(f"{prefix}_{key}", text)
        gauge.add_metric([], stats.get(key, 0))
        gauges.append(gauge)
    return [events, *gauges]


class ReloadCollector:
    """SIGHUP reloads by outcome, and when one last left the daemon on its file's content."""

    def __init__(self, prefix: str, reloader: Reloader[Any]) -> None:
        self.prefix = prefix
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            f"{self.prefix}_config_reloads",
            "Configuration reloads (SIGHUP) by outcome: applied, unchanged, refused, failed.",
            labels=["outcome"],
        )
        for outcome, n in self.reloader.counters.items():
            reloads.add_metric([outcome], n)
        yield reloads
        ok = GaugeMetricFamily(
            f"{self.prefix}_config_last_reload_successful",
            "1 when the last reload applied the file (or found no change), 0 when it was refused.",
        )
        ok.add_metric([], 1.0 if self.reloader.last_ok else 0.0)
        yield ok
        when = GaugeMetricFamily(
            f"{self.prefix}_config_last_reload_success_timestamp_seconds",
            "When a reload last succeeded (Unix time; 0: none since the daemon started).",
        )
        when.add_metric([], self.reloader.last_success or 0.0)
        yield when
