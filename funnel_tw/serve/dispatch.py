"""The dispatcher: which protocol takes a flow, from the serve configuration.

https mounts         TLS ends here (SNI certificate, ALPN h2/http1.1) -> HTTP site
tcp-forward          the raw stream (still TLS) spliced to the backend, PROXY header optional
tls-terminated-tcp   TLS ends here, plaintext spliced to the backend, PROXY header optional
handler = NAME       a plugin's protocol, behind TLS if the plugin asks for it
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import ip_address
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from ..flow import Flow, IIngressHandler
from ..plugin.api import PluginMetrics
from ..tls.store import ACME_ALPN, HTTP_ALPN, CertificateStore
from ..web import splice
from ..web.closing import BoundedCloseTLSFactory
from ..web.factories import OneProtocolFactory
from ..web.hostport import parse_host_port
from . import proxyproto
from .model import ServeConfig, TCPPortHandler
from .plugins import PluginStart, plugin_protocol
from .web import MountRouter, ServeSite

log = Logger()


@implementer(IHandshakeListener, IHalfCloseableProtocol)
class CloseAfterACMEHandshake(Protocol):
    """RFC 8737: a connection that negotiated ``acme-tls/1`` is closed right after its
    handshake and never reaches the handler; every other one is passed straight through."""

    def __init__(self, inner: IProtocol) -> None:
        self.inner = inner
        self.started = False  # the handler is connected only once the handshake is done

    def handshakeCompleted(self) -> None:
        if getattr(self.transport, "negotiatedProtocol", None) == ACME_ALPN:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.started = True
        self.inner.makeConnection(self.transport)  # type: ignore[arg-type]
        listener = IHandshakeListener(self.inner, None)
        if listener is not None:
            listener.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            self.inner.dataReceived(data)

    def readConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        half = IHalfCloseableProtocol(self.inner, None)
        if half is not None:
            half.writeConnectionLost()

    def connectionLost(self, reason: Any = None) -> None:
        if self.started:
            self.inner.connectionLost(reason)


class BackendConnector(splice.SpliceEnd):
    """The client-facing end of a forward: connects to the backend when the stream starts."""

    def __init__(
        self, dispatcher: Dispatcher, target: str, flow: Flow, proxy_protocol: int | None
    ) -> None:
        super().__init__("client")
        self.dispatcher = dispatcher
        self.target = target
        self.flow = flow
        self.proxy_protocol = proxy_protocol

    def connectionMade(self) -> None:
        parsed = parse_host_port(self.target)
        if parsed is None:  # the configuration writes every target as host:port
            raise ValueError(f"backend {self.target!r} is not host:port")
        host, port = parsed
        backend = splice.SpliceEnd("backend")
        endpoint = endpoints.HostnameEndpoint(self.dispatcher.reactor, host, port, timeout=10)
        d = endpoint.connect(OneProtocolFactory(backend))

        def connected(_: Any) -> None:
            backend.transport.setTcpNoDelay(True)
            if self.proxy_protocol:
                backend.transport.write(
                    self.dispatcher.proxy_header(self.proxy_protocol, self.flow, port)
                )
            splice.join(self, backend)

        def failed(failure: Any) -> None:
            self.dispatcher.count("backend_unreachable")
            log.info(
                "backend {target} for {host}:{port} unreachable: {error}",
                target=self.target,
                host=self.flow.host,
                port=self.flow.port,
                error=failure.getErrorMessage(),
            )
            if self.transport is not None:
                self.transport.loseConnection()

        d.addCallbacks(connected, failed)


class Dispatcher:
    def __init__(
        self,
        *,
        serve: ServeConfig,
        store: CertificateStore,
        reactor: Any,
        overlay_addresses: list[str],
        handlers: Mapping[int | str, IIngressHandler] | None = None,
        proxy_factory: Any = None,
    ) -> None:
        self.serve = serve
        self.store = store
        self.reactor = reactor
        self.overlay_addresses = overlay_addresses
        self.handlers = dict(handlers or {})  # by section key: port, or "host:port"
        self.plugin_metrics: dict[int | str, PluginMetrics] = {}  # by section key
        self.proxy_factory = proxy_factory
        self.counters: dict[str, int] = {}
        self.http_timeout = 300.0  # an HTTPS connection idle this long is closed
        # set by the node for its access log and metrics (node/observe.py)
        self.on_request: Callable[[Request, Flow], None] | None = None
        self.track: Callable[[Flow, IProtocol, TCPPortHandler], IProtocol] | None = None

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def proxy_header(self, version: int, flow: Flow, backend_port: int) -> bytes:
        family = ip_address(flow.client[0]).version
        own = next(
            (a for a in self.overlay_addresses if ip_address(a).version == family),
            self.overlay_addresses[0],
        )
        return proxyproto.header(version, flow.client, (own, backend_port))

    def _tls(self, inner: IProtocol, alpn: tuple[bytes, ...]) -> IProtocol:
        # a bounded close: a stalled client cannot hold a TLS flow open after it is closed
        factory = BoundedCloseTLSFactory(
            self.store.creator(alpn),
            False,
            OneProtocolFactory(CloseAfterACMEHandshake(inner)),
            clock=self.reactor,
        )
        wrapped = factory.buildProtocol(None)
        assert wrapped is not None
        return wrapped

    def protocol_for(self, flow: Flow) -> IProtocol | None:
        """The protocol that takes ``flow``'s stream, or None (refused and counted).

        The section is picked by ``flow.host`` (the ingress target of a funnel flow): its
        [serve HOST:PORT], else [serve PORT]; HTTPS mounts then pick the site by SNI."""
        found = self.serve.handler_for(flow.host, flow.port)
        if found is None:
            self.count("no_handler")
            return None
        self.count("flows")
        key, handler = found
        protocol = self._build(handler, flow, key)
        if protocol is not None and self.track is not None:
            return self.track(flow, protocol, handler)
        return protocol

    def _build(self, handler: TCPPortHandler, flow: Flow, key: int | str) -> IProtocol | None:
        if handler.https:
            site = ServeSite(
                MountRouter(self.serve, flow.port, flow, self.proxy_factory, self.count),
                self.reactor,
                timeout=self.http_timeout,
            )
            site.on_request, site.flow = self.on_request, flow
            inner = site.buildProtocol(None)
            assert inner is not None
            return self._tls(inner, HTTP_ALPN)
        if handler.tcp_forward is not None:
            connector = BackendConnector(self, handler.tcp_forward, flow, handler.proxy_protocol)
            if handler.terminate_tls is not None:
                return self._tls(connector, ())
            return connector
        if handler.handler is not None:
            plugin = self.handlers.get(key)
            if plugin is None:
                self.count("no_handler")
                return None
            metrics = self.plugin_metrics.get(key)

            def build(flow: Flow) -> IProtocol | None:
                return plugin_protocol(plugin, flow, handler.handler or "", metrics, self.count)

            if not plugin.terminate_tls:
                return build(flow)
            alpn = tuple(getattr(plugin, "alpn", ()))  # a plugin may name its protocols
            return self._tls(PluginStart(build, flow), alpn)  # built after the handshake
        self.count("no_handler")
        return None
