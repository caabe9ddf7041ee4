"""The relay's health checks, run on the reactor: feed ``relay/health.py`` what WireGuard
knows of each node, and probe the nodes due with a TCP connect to their peerAPI over the
overlay (refused while a node stops gracefully, silent when it is gone)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

from twisted.internet import defer, error, protocol, task
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import RelayNode
from ..wireguard.peer import Peer
from .health import PROBE_TIMEOUT, Health
from .routes import Pool, Routes

log = Logger()

TICK = 0.25  # how often the WireGuard state is read and due probes start


class _Probe(protocol.Protocol):
    """Connected is all a probe asks: reset at once (no TIME-WAIT left on either side)."""

    def connectionMade(self) -> None:
        cast(ITCPTransport, self.transport).abortConnection()


class Prober:
    def __init__(
        self,
        reactor: Any,
        routes: Routes,
        health: Health,
        peers: Callable[[], Iterable[Peer]],
        endpoint: Callable[[str, int, float], IStreamClientEndpoint],
    ) -> None:
        """``peers()``: the overlay's WireGuard peers; ``endpoint(host, port, timeout)``: a
        client endpoint over the overlay."""
        self.reactor = reactor
        self.routes = routes
        self.health = health
        self.peers = peers
        self.endpoint = endpoint
        self.probes = 0
        self._peers: dict[str, Peer] = {}
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(TICK, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> None:
        now = self.reactor.seconds()
        health = self.health
        health.sync((tuple(n.name for n in pool.nodes) for pool in self.routes.pools()), now)
        self._peers = {peer.name: peer for peer in self.peers()}
        for peer in self._peers.values():
            self._read(peer, now)
        by_name = {node.name: node for node in self.routes.nodes}
        for name in health.due(now):
            node = by_name.get(name)
            if node is not None:
                self.probe(node)

    def refresh(self, pool: Pool) -> None:
        """Read the WireGuard state of a pool's nodes now (a new connection is choosing)."""
        now = self.reactor.seconds()
        for node in pool.nodes:
            peer = self._peers.get(node.name)
            if peer is not None:
                self._read(peer, now)

    def _read(self, peer: Peer, now: float) -> None:
        went_out = self.health.wireguard(
            peer.name,
            now,
            endpoint_known=peer.endpoint is not None,
            last_handshake=peer.last_handshake,
            rx_packets=peer.rx_packets,
        )
        if went_out:
            why = self.health.reason(peer.name)
            log.warn("node {node} out of service: {why}", node=peer.name, why=why)

    def probe(self, node: RelayNode) -> None:
        self.probes += 1
        ip, port = node.peerapi
        d = self.endpoint(str(ip), port, PROBE_TIMEOUT).connect(
            protocol.Factory.forProtocol(_Probe)
        )
        where = f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"
        d.addCallbacks(
            lambda _: self._answered(node.name), self._failed, errbackArgs=(node.name, where)
        )

    def _answered(self, name: str) -> None:
        if self.health.succeeded(name, self.reactor.seconds(), probe=True):
            log.info("node {node} back in service (probe answered)", node=name)

    def _failed(self, failure: Failure, name: str, where: str) -> None:
        if failure.check(error.TimeoutError, defer.TimeoutError):
            why = f"probe: no answer from {where} within {PROBE_TIMEOUT:g} s"
        elif failure.check(error.ConnectionRefusedError):
            why = f"probe: {where} refused (the node is stopping?)"
        else:
            why = f"probe of {where}: {failure.getErrorMessage()}"
        if self.health.failed(name, why, self.reactor.seconds(), probe=True):
            log.warn("node {node} out of service: {why}", node=name, why=why)
