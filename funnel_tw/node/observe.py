"""What an operator watches on a node: Prometheus metrics, the access log, readiness.

Most numbers already exist as counters the node keeps for ``funnel-tw status`` (the ingress
resource's, the dispatcher's, the certificate store's, the overlay's); :class:`NodeCollector`
reads them when Prometheus scrapes. Three things are new, each one dict or int update per
request or flow, never per byte:

- a request, when it finishes (``ServeSite.log``): requests by mount and code, the duration
  histogram, and its access log line;
- a flow (one public connection, or one tailnet connection to a serve port), wrapped by
  :class:`TrackedFlow` to count it as active until it ends; a non-HTTP flow (tcp-forward,
  tls-terminated-tcp, a plugin) gets one access log line when it ends.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.application.service import IService
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol, ITransport
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from ..daemon.accesslog import AccessLog, AccessLogService, fields_line, iso_time
from ..daemon.accesslog import http_combined_line as combined
from ..daemon.metrics import MetricsService, wireguard_metrics
from ..flow import Flow
from ..serve.model import TCPPortHandler
from ..serve.notes import request_notes
from ..web.hostport import format_host_port
from .status.document import StatusSource

SESSION_LIFETIME = 180.0  # WireGuard's Reject-After-Time: no handshake since is no session
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
NO_MOUNT = "-"  # a request no mount took (no such site, a refused path)
INGRESS_OUTCOMES = {
    "ingress_accepted": "accepted",
    "ingress_400": "bad_request",
    "ingress_403": "forbidden",
    "ingress_405": "method_not_allowed",
}


def flow_kind(handler: TCPPortHandler) -> str:
    if handler.https:
        return "https"
    if handler.tcp_forward is not None:
        return "tls-terminated-tcp" if handler.terminate_tls is not None else "tcp-forward"
    return "handler"


class TrackedFlow(TwistedProtocol):
    """A flow's protocol, seen from outside: started, bytes in, ended. Everything passes through
    to ``inner``, which gets the real transport (its writes are not wrapped)."""

    def __init__(self, observer: NodeObserver, flow: Flow, inner: IProtocol, kind: str) -> None:
        self.observer = observer
        self.flow = flow
        self.inner = inner
        self.kind = kind
        self.started = 0.0
        self.bytes_received = 0

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.connected = 1
        self.observer.flow_started(self)
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        self.connected = 0
        try:
            self.inner.connectionLost(reason)
        finally:
            self.observer.flow_ended(self, reason)


@implementer(IHalfCloseableProtocol)
class HalfCloseTrackedFlow(TrackedFlow):
    """The same for an inner protocol that takes half-closes: they are passed on."""

    def readConnectionLost(self) -> None:
        IHalfCloseableProtocol(self.inner).readConnectionLost()

    def writeConnectionLost(self) -> None:
        IHalfCloseableProtocol(self.inner).writeConnectionLost()


class NodeObserver:
    """The node's metrics registry, access log and request/flow accounting."""

    def __init__(self, node: StatusSource) -> None:
        self.node = node
        self.reactor = node.reactor
        ops = node.config.ops
        self.http_requests: dict[tuple[str, str], int] = {}
        self.duration_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.active = 0
        self.flows: dict[str, int] = {}  # by kind
        self.access_log: AccessLog | None = None
        if ops.access_log is not None:
            self.access_log = AccessLog(ops.access_log, ops.access_log_format)
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(self))

    @property
    def wanted(self) -> bool:
        """Whether anything reads the per-request numbers (else the hooks stay off)."""
        return self.access_log is not None or self.node.config.ops.metrics_listen is not None

    def services(self) -> list[IService]:
        out: list[IService] = []
        config = self.node.config
        if self.access_log is not None:
            out.append(AccessLogService(self.access_log, f"{config.path}: [node] access-log"))
        if config.ops.metrics_listen is not None:
            out.append(
                MetricsService(
                    self.reactor, config.ops.metrics_listen, self.registry, self.not_ready
                )
            )
        return out

    def reopen(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    # --- readiness --------------------------------------------------------------------------

    def sessions(self) -> list[str]:
        """The funnel-ingress peers (relays) with a WireGuard session up now."""
        now = self.reactor.seconds()
        return [
            peer.name
            for peer in self.node.overlay.device.peers
            if (spec := self.node.peers_by_name.get(peer.name)) is not None
            and spec.funnel_ingress
            and peer.last_handshake is not None
            and now - peer.last_handshake < SESSION_LIFETIME
        ]

    def not_ready(self) -> str | None:
        """/ready: None once a relay has a WireGuard session with us, else why not."""
        if self.sessions():
            return None
        return "no WireGuard session with a relay (a funnel-ingress peer)"

    # --- requests and flows -----------------------------------------------------------------

    def http_request(self, request: Request, flow: Flow) -> None:
        now = self.reactor.seconds()
        notes = request_notes(request)
        duration = max(0.0, now - notes.get("started", now))
        mount = notes.get("mount") or NO_MOUNT
        key = (mount, str(request.code))
        self.http_requests[key] = self.http_requests.get(key, 0) + 1
        self.duration_counts[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        if self.access_log is None:
            return
        record: dict[str, Any] = {
            "time": iso_time(now),
            "client": format_host_port(*flow.client),
            "host": request.getRequestHostname().decode("latin-1"),
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "status": request.code,
            "bytes_sent": request.sentLength,
            "duration": round(duration, 6),
            "mount": notes.get("mount"),
            "funnel": flow.funnel,
            "user": notes.get("user"),
            "reason": notes.get("reason"),
            "_time": now,
        }
        if self.access_log.format == "combined":
            record["protocol"] = request.clientproto.decode("latin-1")
            record["referer"] = _header(request, b"referer")
            record["user_agent"] = _header(request, b"user-agent")
            record["funnel"] = "yes" if flow.funnel else "no"
        self.access_log.write(record, combined)

    def track(self, flow: Flow, protocol: IProtocol, handler: TCPPortHandler) -> IProtocol:
        kind = flow_kind(handler)
        if IHalfCloseableProtocol.providedBy(protocol):
            return HalfCloseTrackedFlow(self, flow, protocol, kind)
        return TrackedFlow(self, flow, protocol, kind)

    def flow_started(self, tracked: TrackedFlow) -> None:
        tracked.started = self.reactor.seconds()
        self.active += 1
        self.flows[tracked.kind] = self.flows.get(tracked.kind, 0) + 1

    def flow_ended(self, tracked: TrackedFlow, reason: Failure) -> None:
        self.active -= 1
        if self.access_log is None or tracked.kind == "https":
            return  # an HTTPS flow's requests have their own lines
        now = self.reactor.seconds()
        flow = tracked.flow
        sent = getattr(tracked.transport, "bytes_sent", None)  # the userspace stack counts
        record: dict[str, Any] = {
            "time": iso_time(now),
            "client": format_host_port(*flow.client),
            "host": flow.host,
            "port": flow.port,
            "kind": tracked.kind,
            "funnel": flow.funnel,
            "bytes_received": tracked.bytes_received,
            "bytes_sent": sent,
            "duration": round(max(0.0, now - tracked.started), 6),
            "reason": _end_reason(reason),
            "flow": flow.id,
            "_time": now,
        }
        if self.access_log.format == "combined":
            record["funnel"] = "yes" if flow.funnel else "no"
        self.access_log.write(record, fields_line)


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _end_reason(reason: Failure) -> str | None:
    if reason.check(ConnectionDone) is not None:
        return None
    return reason.getErrorMessage() or type(reason.value).__name__


class NodeCollector:
    """Reads the node's counters when Prometheus scrapes (names as in docs/operations.md)."""

    def __init__(self, observer: NodeObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        obs = self.observer
        node = obs.node
        counters = node.counters()

        requests = CounterMetricFamily(
            "funnel_node_http_requests",
            "HTTP requests served on HTTPS ports, by mount path and status code.",
            labels=["mount", "code"],
        )
        for (mount, code), n in sorted(obs.http_requests.items()):
            requests.add_metric([mount, code], n)
        yield requests

        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), obs.duration_counts, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "funnel_node_request_duration_seconds",
            "Time from a request's head to its last byte (or its connection's loss).",
            buckets=buckets,
            sum_value=obs.duration_sum,
        )

        ingress = CounterMetricFamily(
            "funnel_node_ingress_connections",
            "POST /v0/ingress answers to relays: accepted, or the refusal.",
            labels=["outcome"],
        )
        for key, n in sorted(counters["ingress"].items()):
            ingress.add_metric([INGRESS_OUTCOMES.get(key, key.removeprefix("ingress_"))], n)
        yield ingress

        yield GaugeMetricFamily(
            "funnel_node_active_connections",
            "Flows open now: public connections through relays and tailnet serve connections.",
            value=obs.active,
        )
        flows = CounterMetricFamily(
            "funnel_node_flows", "Flows handed to a handler, by kind.", labels=["kind"]
        )
        for kind, n in sorted(obs.flows.items()):
            flows.add_metric([kind], n)
        yield flows

        events = CounterMetricFamily(
            "funnel_node_events",
            "The node's refusal and error counters (as funnel-tw status shows them).",
            labels=["component", "event"],
        )
        for component in ("serve", "tls"):
            for key, n in sorted(counters.get(component, {}).items()):
                events.add_metric([component, key], n)
        yield events

        yield from plugin_metrics(node)

        expiry = GaugeMetricFamily(
            "funnel_node_certificate_expiry_timestamp_seconds",
            "When the certificate served for each hostname expires (Unix time).",
            labels=["hostname"],
        )
        installed = node.store.certificates()
        for name in node.store.hostnames:
            cert = installed.get(name)
            if cert is not None:
                expiry.add_metric([name], cert.not_after.timestamp())
        yield expiry

        yield from wireguard_metrics("funnel_node", "peer", node.overlay, counters["overlay"])


def plugin_metrics(node: Any) -> Iterator[Metric]:
    """Handler plugins' own counters and gauges, labelled by plugin name (sections of one
    plugin add up), and their refusals by reason: names and reasons are bounded per plugin."""
    status = node.plugin_status() if hasattr(node, "plugin_status") else {}
    counters: dict[tuple[str, str], float] = {}
    gauges: dict[tuple[str, str], float] = {}
    refused: dict[tuple[str, str], float] = {}
    for entry in status.values():
        for into, group in ((counters, "counters"), (gauges, "gauges"), (refused, "refused")):
            for name, value in entry[group].items():
                key = (entry["plugin"], name)
                into[key] = into.get(key, 0) + value
    families = (
        (
            CounterMetricFamily,
            "funnel_node_plugin_events",
            "A plugin's own counters.",
            "name",
            counters,
        ),
        (GaugeMetricFamily, "funnel_node_plugin_gauge", "A plugin's own gauges.", "name", gauges),
        (
            CounterMetricFamily,
            "funnel_node_plugin_refusals",
            "Flows a plugin refused, by its reason.",
            "reason",
            refused,
        ),
    )
    for family, metric, text, label, found in families:
        out = family(metric, text, labels=["plugin", label])
        for (plugin, name), value in sorted(found.items()):
            out.add_metric([plugin, name], value)
        yield out


def attach_observer(node: Any) -> NodeObserver:
    """Build the node's observer and hook it in: the dispatcher's request and flow hooks (only
    when an access log or metrics want them) and its services as children of ``node``."""
    observer = NodeObserver(node)
    if observer.wanted:
        node.dispatcher.on_request = observer.http_request
        node.dispatcher.track = observer.track
    for service in observer.services():
        service.setServiceParent(node)
    return observer


def not_serving(node: Any) -> str | None:
    """sd_notify READY=1 waits for this to be None: the WireGuard socket, the peerAPI and
    serve listeners, and a certificate for every hostname (a self-signed stand-in counts while
    ACME is still issuing: serving it beats failing the unit's start)."""
    if not node.running or node.overlay.tunnel is None:
        return "WireGuard"
    if len(node.listening) < 1 + len(node.serve.ports):
        return "listeners"
    installed = node.store.certificates()
    missing = [name for name in node.store.hostnames if name not in installed]
    if missing:
        return "certificates for " + ", ".join(missing)
    return None


def status_line(node: Any) -> str:
    """The one-line STATUS= systemd shows: names, relay sessions, open flows."""
    relays = node.observer.sessions()
    names = ", ".join(node.config.hostnames) or "no hostname"
    session = f"relay session up ({', '.join(relays)})" if relays else "no relay session"
    return f"serving {names}; {session}; {node.observer.active} open connections"
