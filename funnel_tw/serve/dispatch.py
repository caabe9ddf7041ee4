"""The dispatcher: which protocol takes a flow, from the serve configuration.

https mounts         TLS ends here (SNI certificate, ALPN h2/http1.1) -> HTTP site
tcp-forward          the raw stream (still TLS) spliced to the backend, PROXY header optional
tls-terminated-tcp   TLS ends here, plaintext spliced to the backend, PROXY header optional
handler = NAME       a plugin's protocol, behind TLS if the plugin asks for it
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from ipaddress import ip_address
from typing import Any

from twisted.internet import endpoints
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.web.server import Request

from ..flow import Flow, IIngressHandler
from ..plugin.api import PluginMetrics
from ..tls.store import HTTP_ALPN, CertificateStore
from ..web import splice
from ..web.factories import OneProtocolFactory
from ..web.h2watch import H2Limits
from ..web.hostport import format_host_port, parse_host_port
from ..web.httplimits import HTTPLimits
from . import proxyproto
from .guard import FlowGuard, GuardedTLSFactory
from .model import ServeConfig, TCPPortHandler
from .plugins import PluginStart, plugin_protocol
from .web import MountRouter, ServeSite

log = Logger()


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
        self.admit: Any = None  # after the TLS handshake: (transport) -> bool, client-ca-file

    def connectionMade(self) -> None:
        if self.admit is not None and not self.admit(self.transport):
            self.transport.loseConnection()
            return
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
        access: Any = None,
    ) -> None:
        self.access = access  # serve/access/guard.py Access, or None: no policies
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
        # the request class of HTTPS sites when the node captures them (funnel_tw/inspect/)
        self.capture: type[Request] | None = None
        # the limits of every flow (set from [node] by NodeService; tests shorten them)
        self.tls_handshake_timeout = 10.0
        self.close_timeout = 10.0  # after the node closes: then aborted
        self.http_limits = HTTPLimits()
        self.h2_limits = H2Limits()
        # shared by every flow of a kind: (ALPN, client certificates, close timeout)
        self._tls_factories: dict[tuple[tuple[bytes, ...], bool, float], GuardedTLSFactory] = {}

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def refused(self, flow: Flow, counter: str, reason: str, host: str | None) -> None:
        """A client refused by a limit: counted, and logged with who, for what, and why."""
        self.count(counter)
        log.info(
            "refused {client} for {host}:{port}: {why}",
            client=format_host_port(*flow.client),
            host=host or flow.host,
            port=flow.port,
            why=reason,
        )

    def proxy_header(self, version: int, flow: Flow, backend_port: int) -> bytes:
        family = ip_address(flow.client[0]).version
        own = next(
            (a for a in self.overlay_addresses if ip_address(a).version == family),
            self.overlay_addresses[0],
        )
        return proxyproto.header(version, flow.client, (own, backend_port))

    def _tls(
        self,
        inner: IProtocol,
        alpn: tuple[bytes, ...],
        flow: Flow,
        http: bool = False,
        client_certificates: bool = False,
        refuse: Callable[[str, str, str | None], None] | None = None,
    ) -> IProtocol:
        """TLS around ``inner``, with the handshake and close deadlines (serve/guard.py), for an
        HTTPS site the HTTP/2 frame watch, and a client certificate asked for when an access
        policy of the port needs one."""
        guard = FlowGuard(
            inner,
            self.reactor,
            refuse or partial(self.refused, flow),
            handshake_timeout=self.tls_handshake_timeout,
            h2_limits=self.h2_limits if http else None,
            head_timeout=self.http_limits.head_timeout,
        )
        key = (alpn, client_certificates, self.close_timeout)
        factory = self._tls_factories.get(key)
        if factory is None:
            creator = self.store.creator(alpn, client_certificates)
            factory = GuardedTLSFactory(creator, self.reactor, self.close_timeout)
            self._tls_factories[key] = factory
        return factory.wrap(guard)

    def protocol_for(self, flow: Flow) -> IProtocol | None:
        """The protocol that takes ``flow``'s stream, or None (refused and counted).

        The section is picked by ``flow.host`` (the ingress target of a funnel flow): its
        [serve HOST:PORT], else [serve PORT]; HTTPS mounts then pick the site by SNI."""
        found = self.serve.handler_for(flow.host, flow.port)
        if found is None:
            self.count("no_handler")
            return None
        key, handler = found
        # a non-HTTP port: deny/allow and the rate of new connections, before anything
        guarded = handler.access is not None and self.access is not None and not handler.https
        if guarded and not self.access.admits_connection(handler.access, flow, flow.host):
            self.count("access_refused")
            return None
        self.count("flows")
        protocol = self._build(handler, flow, key)
        if protocol is not None and self.track is not None:
            return self.track(flow, protocol, handler)
        return protocol

    def _build(self, handler: TCPPortHandler, flow: Flow, key: int | str) -> IProtocol | None:
        if handler.https:
            refuse = partial(self.refused, flow)  # one for the site and its TLS guard
            site = ServeSite(
                MountRouter(
                    self.serve, flow.port, flow, self.proxy_factory, self.count, self.access
                ),
                self.reactor,
                timeout=self.http_timeout,
                limits=self.http_limits,
                refused=refuse,
            )
            site.on_request, site.flow = self.on_request, flow
            if self.capture is not None:
                site.requestFactory = self.capture  # type: ignore[assignment]
            inner = site.buildProtocol(None)
            assert inner is not None
            mtls = self.access is not None and self.access.wants_client_certificates(
                self.serve, flow.port, handler
            )
            return self._tls(
                inner, HTTP_ALPN, flow, http=True, client_certificates=mtls, refuse=refuse
            )
        if handler.tcp_forward is not None:
            connector = BackendConnector(self, handler.tcp_forward, flow, handler.proxy_protocol)
            if handler.terminate_tls is not None:
                mtls = self.access is not None and self.access.wants_client_certificates(
                    self.serve, flow.port, handler
                )
                if mtls and handler.access is not None:
                    connector.admit = self.access.certificate_check(handler.access, flow)
                return self._tls(connector, (), flow, client_certificates=mtls)
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
            return self._tls(PluginStart(build, flow), alpn, flow)  # built after the handshake
        self.count("no_handler")
        return None
