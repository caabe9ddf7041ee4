"""RelayService: the relay daemon: the overlay, the public listeners, graceful shutdown."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ..config import RelayConfig
from ..daemon.localapi.address import STATUS_PATH
from ..daemon.localapi.server import LocalAPIService, LocalAPISite
from ..overlay.service import OverlayService
from ..overlay.userspace import UserspaceOverlayInterface
from .balance import Balancer
from .endpoints import EndpointMemory
from .fallback import FallbackAcceptor
from .health import Health
from .observe import RelayObserver
from .probe import Prober
from .public import ConnectionLimits, PublicFactory
from .redirect import redirect_site
from .routes import Routes

log = Logger()

SESSION_LIFETIME = 180.0  # WireGuard's Reject-After-Time: no handshake since is no session


class RelayService(MultiService):
    def __init__(self, config: RelayConfig, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self.overlay = UserspaceOverlayInterface(
            reactor,
            private_key=config.private_key,
            addresses=config.addresses,
            peers=config.nodes,
            listen_port=config.listen_port,
            mtu=config.mtu,
            caps=config.tcp,
        )
        self.routes = Routes(config.nodes)
        self.fallback = FallbackAcceptor(reactor, lambda: self.overlay.tunnel)
        # pools: which nodes are in service, and in which order a name's nodes are tried
        self.health = Health()
        self.balancer = Balancer(self.routes, self.health, lambda: self.config)
        self.prober = Prober(
            reactor,
            self.routes,
            self.health,
            lambda: self.overlay.device.peers,
            self.overlay.client_endpoint,
        )
        self.balancer.refresh = self.prober.refresh
        self.limits = ConnectionLimits(config.max_connections, config.max_connections_per_ip)
        # metrics-listen, access-log, and the local API for `funnel-tw status` (first: a
        # second relay with the same state-dir stops there)
        self.observer = RelayObserver(reactor, config, self.overlay, self.limits, self.balancer)
        self.observer.fallback = self.fallback
        self.localapi = LocalAPISite({STATUS_PATH: self.observer.status}, reactor)
        LocalAPIService(self.localapi, config.state_dir, reactor, "relay").setServiceParent(self)
        OverlayService(self.overlay).setServiceParent(self)
        for service in self.observer.services():
            service.setServiceParent(self)
        self.ports: list[IListeningPort] = []
        self.public: dict[int, IListeningPort] = {}  # public port -> listener (reload.py)
        self.factories: dict[int, PublicFactory] = {}
        self.endpoints = EndpointMemory(
            self.overlay,
            config.state_dir / "endpoints.json",
            {n.name for n in config.nodes if n.endpoint is not None},
            reactor,
        )

    def factory_for(self, public_port: int) -> PublicFactory:
        factory = self.factories[public_port] = PublicFactory(
            reactor=self.reactor,
            routes=self.routes,
            node_endpoint=lambda host, port: self.overlay.client_endpoint(
                host, port, self.config.ingress_connect_timeout
            ),
            public_port=public_port,
            client_hello_timeout=self.config.client_hello_timeout,
            idle_timeout=self.config.idle_timeout,
            limits=self.limits,
            ingress_timeout=self.config.ingress_connect_timeout,
            why_unreachable=self.why_unreachable,
            on_finished=self.observer.finished,
            fallback=self.fallback if self.config.tcp_fallback else None,
            balancer=self.balancer,
        )
        return factory

    def why_unreachable(self, node: str) -> str | None:
        """What the overlay knows of a node that does not answer (None: its session is up)."""
        peer = next((p for p in self.overlay.device.peers if p.name == node), None)
        if peer is None:
            return None
        if peer.endpoint is None:
            return "no WireGuard session (no endpoint known: the node has not been heard from)"
        last = peer.last_handshake
        if last is None or self.reactor.seconds() - last > SESSION_LIFETIME:
            return f"no WireGuard session with {peer.endpoint[0]}:{peer.endpoint[1]}"
        return None

    def startService(self) -> None:
        log.info(
            "funnel-tw relay starting: {addresses}, {nodes} nodes",
            addresses=", ".join(str(a) for a in self.config.addresses),
            nodes=len(self.config.nodes),
        )
        for warning in self.config.warnings:
            log.warn("config: {why}", why=warning)
        super().startService()
        self.endpoints.start()
        self.prober.start()
        address = self.config.public_address
        try:
            for port in self.config.public_ports:
                self.ports.append(self.listen_public(port))
            if self.config.http_redirect_port is not None:
                https_port = self.config.public_ports[0]
                self.ports.append(
                    self.reactor.listenTCP(
                        self.config.http_redirect_port, redirect_site(https_port), interface=address
                    )
                )
        except OSError as e:
            raise SystemExit(f"funnel-tw relay: cannot listen on {address}: {e}") from None
        log.info(
            "relay listening on {address} ports {ports}",
            address=address,
            ports=", ".join(str(self.public_port(i)) for i in range(len(self.ports))),
        )

    def listen_public(self, port: int) -> IListeningPort:
        """Listen on a public port (at start, or when a reload adds one); raises OSError."""
        listener: IListeningPort = self.reactor.listenTCP(
            port, self.factory_for(port), interface=self.config.public_address, backlog=1024
        )
        self.public[port] = listener
        return listener

    def public_port(self, index: int = 0) -> int:
        return int(getattr(self.ports[index].getHost(), "port", 0))

    async def _stop(self) -> None:
        for port in self.ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        self.ports = []
        open_now = len(self.limits.open)
        if open_now:
            log.info(
                "draining {n} connections for up to {t} s",
                n=open_now,
                t=self.config.shutdown_timeout,
            )
        await self.limits.drain(self.reactor, self.config.shutdown_timeout)
        self.prober.stop()
        self.endpoints.stop()
        await super().stopService()

    def stopService(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._stop())
