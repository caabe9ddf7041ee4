"""NodeService: the node daemon, composed of overlay + peerAPI + serve + TLS."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from ipaddress import ip_address
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ..config import ConfigError, NodeConfig, PeerConfig
from ..flow import Flow, IIngressHandler
from ..inspect.service import Inspector
from ..overlay.factory import build_overlay
from ..overlay.service import OverlayService
from ..peerapi.ingress import IngressResource
from ..peerapi.site import PeerAPIRoot, PeerAPISite
from ..serve.access.guard import Access
from ..serve.dispatch import Dispatcher
from ..serve.model import ServeConfig
from ..serve.plugins import ConfiguredPlugin, build_plugins
from ..serve.proxy import Backends, ProxyResource
from ..tls.sources import (
    CertificateSource,
    CertificateSourceError,
    FilesSource,
    SelfSignedSource,
)
from ..tls.store import CertificateStore
from ..web.hostport import format_host_port
from ..web.httplimits import HTTPLimits
from .fallback import FallbackService, fallback_targets
from .observe import attach_observer
from .plugins import DRAIN_TIMEOUT, PluginServices
from .status.server import LocalAPIService

log = Logger()

DRAIN_POLL = 0.1  # how often a stopping node looks whether its flows are done
LAME_DUCK = 1.5  # a relay probes a pool member every second (relay/health.py)


def build_acme_source(
    config: NodeConfig,
    store: CertificateStore,
    reactor: Any,
    relay_session: Callable[[], bool] | None = None,
) -> Any:
    """``[tls] source = acme``: the issuing service with its responder and HTTP client.

    ``relay_session()`` tells whether a funnel relay can reach us yet: tls-alpn-01 checks wait
    for it, rather than fail and back off before the tunnel is up.
    """
    import treq
    from twisted.internet import ssl
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

    from ..tls.acme import ACMEClient
    from ..tls.challenges import ChallengeError, DNSHookResponder, TLSALPNResponder, dns_plugin
    from ..tls.issuer import ACMESource

    tls = config.tls
    assert tls.acme_directory is not None
    trust = None
    if tls.acme_ca_file:  # every certificate in the file is trusted, not only the first
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        roots = x509.load_pem_x509_certificates(tls.acme_ca_file.read_bytes())
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in roots]
        )
    http = treq.client.HTTPClient(
        Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust))
    )
    directory = tls.acme_directory
    if tls.acme_challenge == "dns-01" and tls.acme_dns_plugin is not None:
        try:
            responder: Any = dns_plugin(tls.acme_dns_plugin, reactor)
        except ChallengeError as e:
            raise ConfigError(f"{config.path}: [tls] acme-dns-plugin: {e}") from None
    elif tls.acme_challenge == "dns-01":
        assert tls.acme_dns_hook is not None
        responder = DNSHookResponder(tls.acme_dns_hook, reactor)
    else:
        responder = TLSALPNResponder(store)
    tls_alpn = tls.acme_challenge != "dns-01"
    return ACMESource(
        store=store,
        names=list(config.hostnames),
        directory=config.state_dir / "acme",
        client=None,
        client_factory=lambda key: ACMEClient(directory, key, http, reactor),
        email=tls.acme_email,
        responder=responder,
        fallback=SelfSignedSource(store, config.state_dir / "tls", reactor),
        reactor=reactor,
        reachable=relay_session if tls_alpn else None,
    )


class _ServeFactory(Factory):
    """Tailnet "serve": a peer connects to a serve port on our overlay address directly."""

    noisy = False

    def __init__(self, node: NodeService, port: int) -> None:
        self.node = node
        self.port = port

    def buildProtocol(self, addr: Any) -> Any:
        peer = self.node.caller(getattr(addr, "host", ""))
        flow = Flow(
            client=(getattr(addr, "host", ""), getattr(addr, "port", 0)),
            host=self.node.config.hostnames[0] if self.node.config.hostnames else "",
            port=self.port,
            funnel=False,
            peer=peer[0] if peer else "",
        )
        return self.node.dispatcher.protocol_for(flow)


class NodeService(MultiService):
    def __init__(
        self,
        config: NodeConfig,
        reactor: Any = None,
        handlers: Mapping[int | str, IIngressHandler] | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.peers_by_name: dict[str, PeerConfig] = {p.name: p for p in config.peers}
        ingress_port = frozenset({config.peerapi_port})
        self.overlay = build_overlay(
            reactor,
            network=config.network,
            private_key=config.private_key,
            addresses=config.addresses,
            peers=config.peers,
            listen_port=config.listen_port,
            mtu=config.mtu,
            # funnel-ingress peers (relays) reach the peerAPI port and nothing else
            restricted={p.name: ingress_port for p in config.peers if p.funnel_ingress},
            caps=config.tcp,
        )
        LocalAPIService(self, reactor).setServiceParent(self)  # first: a second node stops here
        OverlayService(self.overlay).setServiceParent(self)
        # after the overlay: WireGuard over TLS to a relay's public port when UDP fails
        self.fallback = FallbackService(reactor, self.overlay)
        self.fallback.configure(fallback_targets(config.peers))
        self.fallback.setServiceParent(self)
        self.store = CertificateStore(config.hostnames)
        self.certificates: CertificateSource = self.certificate_source(config)
        self.serve = ServeConfig.from_node_config(config)
        self.backends = Backends(reactor)
        self.access = Access(config.access, reactor, state_dir=config.state_dir)
        self.plugins: dict[int | str, ConfiguredPlugin] = {}
        if handlers is None:  # built with their context: reactor, log, state, metrics
            self.plugins = build_plugins(config, reactor)
            handlers = {key: p.handler for key, p in self.plugins.items()}
        self.dispatcher = Dispatcher(
            serve=self.serve,
            store=self.store,
            reactor=reactor,
            overlay_addresses=[str(a.ip) for a in config.addresses],
            handlers=handlers,
            proxy_factory=lambda target, prefix, flow, timeout, underscores: ProxyResource(
                target, prefix, flow, reactor, self.backends, timeout, underscores
            ),
            access=self.access,
        )
        limits = config.limits  # [node] deadlines for public clients
        self.dispatcher.tls_handshake_timeout = limits.tls_handshake_timeout
        self.dispatcher.http_limits = HTTPLimits(
            head_timeout=limits.http_head_timeout,
            body_timeout=limits.http_body_timeout,
            body_min_rate=limits.http_body_min_rate,
        )
        self.ingress = IngressResource(
            reactor=reactor,
            caller_name=self.caller,
            policy=self.serve,
            dispatcher=self.dispatcher,
            challenge_pending=self.store.has_challenge,
        )
        self.peerapi_site = PeerAPISite(PeerAPIRoot(self.valid_hosts, self.ingress), reactor)
        self.listening: list[IListeningPort] = []
        # On SIGTERM, stay reachable (peerAPI closed, so refusing) this long at least: every
        # relay's next probe sees the refusal before the node goes silent (node/tap.py sets it)
        self.lame_duck = 0.0
        self.serve_listeners: dict[int, IListeningPort] = {}  # by serve port (reload.py)
        self.observer = attach_observer(self)  # metrics-listen, access-log
        self.plugin_services = PluginServices(self.plugins, reactor)
        self.inspector: Inspector | None = None
        if config.inspect is not None:  # inspect-listen: capture, and the page on its address
            self.inspector = Inspector(config.inspect, reactor, self.dispatcher)
            self.inspector.setServiceParent(self)
        for key, plugin in self.plugins.items():
            if plugin.context is not None:
                self.dispatcher.plugin_metrics[key] = plugin.context.metrics

    def certificate_source(self, config: NodeConfig) -> CertificateSource:
        """The source ``[tls]`` names, filling ``self.store`` (at start, and on a reload)."""
        if config.tls.source == "files":
            assert config.tls.cert_file is not None and config.tls.key_file is not None
            return FilesSource(self.store, config.tls.cert_file, config.tls.key_file, self.reactor)
        if config.tls.source == "self-signed":
            return SelfSignedSource(self.store, config.state_dir / "tls", self.reactor)
        acme: CertificateSource = build_acme_source(
            config, self.store, self.reactor, self.relay_session
        )
        return acme

    def listen_serve(self, port: int) -> None:
        """Tailnet serve on ``port`` of our overlay addresses (at start, or added by a reload)."""

        def listening(listener: IListeningPort) -> None:
            self.listening.append(listener)
            self.serve_listeners[port] = listener

        self.overlay.server_endpoint(port).listen(_ServeFactory(self, port)).addCallback(listening)

    # --- decisions ---------------------------------------------------------------------------

    def caller(self, overlay_ip: str) -> tuple[str, bool] | None:
        """The WireGuard peer owning ``overlay_ip`` and whether it has the ingress capability."""
        try:
            packed = ip_address(overlay_ip).packed
        except ValueError:
            return None
        routes = self.overlay.device.routes
        peer = routes.lookup_v4(packed) if len(packed) == 4 else routes.lookup_v6(packed)
        if peer is None:
            return None
        spec = self.peers_by_name.get(peer.name)
        return peer.name, bool(spec and spec.funnel_ingress)

    def renewal_status(self) -> dict[str, Any] | None:
        return self.certificates.status()

    def plugin_status(self) -> dict[str, Any]:
        """Each plugin section's counters, gauges and refusals, by section key."""
        return {
            str(key): {"plugin": p.name, **p.context.metrics.to_json()}
            for key, p in sorted(self.plugins.items(), key=lambda kv: str(kv[0]))
            if p.context is not None
        }

    def counters(self) -> dict[str, dict[str, int]]:
        return {
            "ingress": dict(self.ingress.counters),
            "serve": dict(self.dispatcher.counters),
            "tls": dict(self.store.counters),
            "access": dict(self.access.counters),
            "overlay": self.overlay.stats(),
            "fallback": self.fallback.counters(),
            **({"inspect": self.inspector.counters()} if self.inspector is not None else {}),
        }

    def relay_session(self) -> bool:
        """Whether a funnel-ingress peer (a relay) has completed a handshake with us."""
        return any(
            peer.last_handshake is not None
            for peer in self.overlay.device.peers
            if (spec := self.peers_by_name.get(peer.name)) is not None and spec.funnel_ingress
        )

    def admits_funnel(self, host: str, port: int) -> bool:
        return self.serve.admits_funnel(host, port)

    def valid_hosts(self) -> set[str]:
        port = self.config.peerapi_port
        return {format_host_port(str(a.ip), port) for a in self.config.addresses}

    # --- lifecycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        log.info(
            "funnel-tw node starting: {addresses}, hostnames {hostnames}",
            addresses=", ".join(str(a) for a in self.config.addresses),
            hostnames=", ".join(self.config.hostnames) or "(none)",
        )
        for warning in self.config.warnings:
            log.warn("config: {why}", why=warning)
        try:
            self.certificates.start()
        except CertificateSourceError as e:
            raise SystemExit(f"funnel-tw: no certificate to serve: {e}") from None
        super().startService()
        self.plugin_services.start()  # before any serve port takes a flow
        d = self.overlay.server_endpoint(self.config.peerapi_port).listen(self.peerapi_site)
        d.addCallback(self.listening.append)
        for port in self.serve.ports:
            self.listen_serve(port)
        log.info(
            "peerAPI on port {port}; serving {ports}",
            port=self.config.peerapi_port,
            ports=", ".join(str(p) for p in self.serve.ports) or "nothing",
        )

    def stopService(self) -> defer.Deferred[None]:
        """Stop gracefully: refuse new ingress (the peerAPI port closes, so a relay tries
        another node of the pool at once), let open flows finish within ``DRAIN_TIMEOUT``, and
        only then leave the overlay."""
        self.certificates.stop()
        self.ingress.accepting = False
        for port in self.listening:
            port.stopListening()
        self.listening = []
        plugins = self.plugin_services.stop()  # no new flows now; each within its deadline
        flows = defer.Deferred.fromCoroutine(self._drain_flows(DRAIN_TIMEOUT))

        def drained(_: object) -> defer.Deferred[None]:
            self.backends.close()  # the keep-alive connections the last flows left
            return super(NodeService, self).stopService()  # type: ignore[no-any-return]

        done: defer.Deferred[None] = defer.gatherResults(
            [plugins, flows], consumeErrors=True
        ).addCallback(drained)
        return done

    async def _drain_flows(self, timeout: float) -> None:
        """Wait until the overlay holds no TCP connection (flows, ingress in progress), at
        most ``timeout`` s, and at least ``lame_duck`` s when a relay has a session with us;
        with ``network = tun`` the kernel holds the flows and only ``lame_duck`` is waited."""
        now = self.reactor.seconds()
        deadline = now + timeout
        quiet_until = now + (self.lame_duck if self.relay_session() else 0.0)
        open_now = self.overlay.tcp_connections()
        if open_now:
            log.info("draining {n} open connections for up to {t} s", n=len(open_now), t=timeout)
        while self.reactor.seconds() < deadline:
            if not self.overlay.tcp_connections() and self.reactor.seconds() >= quiet_until:
                return
            await task.deferLater(self.reactor, DRAIN_POLL, lambda: None)
        left = len(self.overlay.tcp_connections() or ())
        if not left:
            return
        log.warn("{n} connections still open after {t} s; closing them", n=left, t=timeout)
