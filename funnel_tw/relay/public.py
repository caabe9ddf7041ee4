"""The relay's public side: accept, read the ClientHello, ask the node, splice.

For each public connection:

1. read the TLS ClientHello (sans-IO parser) within ``client-hello-timeout`` of the accept (a
   total deadline: bytes trickling in do not extend it); no SNI, an unknown name, a malformed
   or oversized hello or a timeout closes the connection (counted);
2. take the nodes of the name's pool that are in service, in the order ``balance`` gives
   (``relay/balance.py``; none in service: close at once, counted ``no_node_in_service``);
   open TCP over the overlay to the first one's peerAPI and send ``POST /v0/ingress``. A node
   that does not answer (within ``ATTEMPT_TIMEOUT`` when another node is left to try), is
   unreachable, or answers 5xx is put out of service (``relay/health.py``); one that answers
   4xx declines this connection only. Either way the next node is asked, the ClientHello still
   held, until ``ingress-connect-timeout`` from the hello; then the public connection is
   closed (a silent node is logged once a minute at most, with why: no WireGuard session or
   no answer from its peerAPI);
3. replay the buffered ClientHello to the node and splice the two connections until both
   sides are done. The relay never holds a key that could decrypt the stream.

Limits: ``max-connections`` in all, ``max-connections-per-ip`` per source address, and an
idle timeout on spliced connections. Shutdown stops accepting and lets open connections drain
for ``shutdown-timeout`` seconds before closing them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IProtocol, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config import RelayNode
from ..overlay.stream import ALPN
from ..web import splice
from ..web.factories import OneProtocolFactory
from ..web.hostport import format_host_port
from .balance import Balancer
from .clienthello import ClientHelloError, ClientHelloParser
from .fallback import FallbackAcceptor
from .health import Health
from .ingress import IngressClientEnd, ingress_request
from .routes import Routes

log = Logger()

UNREACHABLE_LOG_INTERVAL = 60.0  # "node X unreachable" at most this often per node
ATTEMPT_TIMEOUT = 1.0  # a node with another one behind it: connect and answer within this
ACME_ALPN = b"acme-tls/1"


class State(enum.Enum):
    """Where a public connection is: each stage admits only its own events."""

    HELLO = "hello"  # reading the ClientHello
    INGRESS = "ingress"  # asking the node; later client bytes are held for the replay
    SPLICED = "spliced"  # joined to the node: bytes pass both ways
    LINK = "link"  # a node's TCP fallback link (relay/fallback.py owns the bytes)
    CLOSED = "closed"


class PublicConnection(splice.SpliceEnd):
    """One public client, from its first byte until the splice ends."""

    def __init__(self, factory: PublicFactory, public_port: int) -> None:
        super().__init__("public")
        self.factory = factory
        self.public_port = public_port
        self.parser = ClientHelloParser()
        self.state = State.HELLO
        self.source = ("", 0)
        self.node_end: IngressClientEnd | None = None
        self._timer: IDelayedCall | None = None
        self.last_activity = 0.0
        self.target = ""  # SNI host:port, once the ClientHello named it
        self.node_name = ""
        self.node_address = ""
        self.server_name = ""
        self.acme = False  # the ClientHello offers acme-tls/1 (a tls-alpn-01 validation)
        self.candidates: list[RelayNode] = []  # the nodes still to try, in order
        self.deadline = 0.0  # the whole ingress (every attempt) ends by then
        self.tried: list[str] = []  # why each node tried did not take it
        self.holding = ""  # the node this spliced connection counts against (balance)
        # for the access log and metrics: how it ended, when it began, bytes before the splice
        self.outcome = "closed"
        self.started = 0.0
        self.early_in = 0
        self.link: IProtocol | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.source = (peer.host, peer.port)
        self.started = self.factory.reactor.seconds()
        if not self.factory.admit(self):
            self.transport.abortConnection()
            return
        # what the node sends goes out at once: with Nagle, a response's second TLS record
        # waited for the client's delayed ACK (40 ms on Linux) on every new connection
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        reactor = self.factory.reactor
        self.last_activity = reactor.seconds()
        self._timer = reactor.callLater(self.factory.client_hello_timeout, self._hello_timeout)

    def _count(self, outcome: str) -> None:
        """Count what happened; it is also how this connection ended (access log, metrics)."""
        self.outcome = outcome
        self.factory.count(outcome)

    def _hello_timeout(self) -> None:
        self._timer = None
        if self.state is State.HELLO:
            self._count("client_hello_timeout")
            self._close(
                f"no complete ClientHello within {self.factory.client_hello_timeout:g} s "
                f"({len(self.parser.buffer)} bytes)"
            )

    def _close(self, why: str, quiet: bool = False) -> None:
        (log.debug if quiet else log.info)(
            "public connection from {src} for {target} closed: {why}",
            src=format_host_port(*self.source),
            target=self.target or "(no name yet)",
            why=why,
        )
        self.state = State.CLOSED
        if self.node_end is not None and self.node_end.transport is not None:
            self.node_end.transport.abortConnection()
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.release(self)
        if self.holding:
            self.factory.balancer.closed(self.holding)
            self.holding = ""
        if self.factory.on_finished is not None:
            self.factory.on_finished(self)
        node_transport = self.node_end.transport if self.node_end is not None else None
        if self.state is not State.SPLICED and node_transport is not None:
            node_transport.abortConnection()
        if self.link is not None:
            self.link.connectionLost(reason)
        self.state = State.CLOSED
        super().connectionLost(reason)

    # --- the ClientHello -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.last_activity = self.factory.reactor.seconds()
        if self.state is State.SPLICED:
            super().dataReceived(data)
            return
        if self.link is not None:
            self.link.dataReceived(data)
            return
        self.early_in += len(data)
        if self.state is not State.HELLO:
            # bytes after the hello, before the node answered: kept for the replay
            self.parser.buffer += data
            if len(self.parser.buffer) > 2 * self.parser.max_hello:
                self._count("early_data_overflow")
                self._close("too much data before the node answered")
            return
        try:
            hello = self.parser.feed(data)
        except ClientHelloError as e:
            self._count("bad_client_hello")
            self._close(str(e))
            return
        if hello is None:
            return
        if self.factory.fallback is not None and ALPN in hello.alpn:
            self._to_link(self.factory.fallback)
            return
        if hello.server_name is None:
            self._count("no_sni")
            self._close("no SNI in the ClientHello")
            return
        self.target = format_host_port(hello.server_name, self.public_port)
        pool = self.factory.routes.pool(hello.server_name)
        if pool is None:
            self._count("unknown_name")
            self._close("no node serves this name")
            return
        self.candidates = self.factory.balancer.order(pool)
        if not self.candidates:
            self._count("no_node_in_service")
            health = self.factory.balancer.health
            why = "; ".join(f"{n.name}: {health.reason(n.name) or 'out'}" for n in pool.nodes)
            self._close(f"every node of {pool.key} is out of service ({why})")
            return
        self.state = State.INGRESS
        self.server_name = hello.server_name
        self.acme = ACME_ALPN in hello.alpn
        self.deadline = self.factory.reactor.seconds() + self.factory.ingress_timeout
        self.transport.pauseProducing()
        self._next_attempt()

    def _to_link(self, fallback: FallbackAcceptor) -> None:
        """A node asks for the TCP fallback: the connection is its WireGuard link from now on."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.state = State.LINK
        self._count("tcp_fallback")
        self.target = "(TCP fallback)"
        raw, self.parser = self.parser.raw, ClientHelloParser()
        self.link = fallback.take(self.transport, raw, self.source)

    # --- the node ---------------------------------------------------------------------------

    def _next_attempt(self) -> None:
        """Ask the next candidate; with more behind it, give it ``attempt_timeout`` at most."""
        node = self.candidates.pop(0)
        budget = max(0.0, self.deadline - self.factory.reactor.seconds())
        wait = min(budget, self.factory.attempt_timeout) if self.candidates else budget
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.reactor.callLater(wait, self._ingress_timeout)
        self._ask_node(node)

    def _ask_node(self, node: RelayNode) -> None:
        peerapi_ip, peerapi_port = node.peerapi
        request = ingress_request(
            format_host_port(str(peerapi_ip), peerapi_port),
            self.source,
            format_host_port(self.server_name, self.public_port),
            acme=self.acme,
        )
        end = IngressClientEnd(request, self._accepted, lambda why: self._refused(end, why))
        self.node_end = end
        self.node_name = node.name
        self.node_address = format_host_port(str(peerapi_ip), peerapi_port)
        endpoint = self.factory.node_endpoint(str(peerapi_ip), peerapi_port)
        d = endpoint.connect(OneProtocolFactory(end))
        d.addErrback(self._unreachable, end)

    def _ingress_timeout(self) -> None:
        self._timer = None
        if self.state is not State.INGRESS:
            return
        why = self.factory.why_unreachable(self.node_name) or f"no answer from {self.node_address}"
        self.factory.node_unreachable(self.node_name, why)
        self._attempt_failed("node_timeout", f"node {self.node_name} unreachable: {why}", why)

    def _unreachable(self, failure: Failure, end: IngressClientEnd) -> None:
        if self.state is not State.INGRESS or end is not self.node_end:
            return
        why = self.factory.why_unreachable(self.node_name) or failure.getErrorMessage()
        self.factory.node_unreachable(self.node_name, why)
        self._attempt_failed("node_unreachable", f"node {self.node_name} unreachable: {why}", why)

    def _refused(self, end: IngressClientEnd, why: str) -> None:
        if self.state is not State.INGRESS or end is not self.node_end:
            return
        # a 4xx is this node declining this name (not served here, no pending ACME challenge):
        # the next node may take it; no answer or a 5xx (a node going away) puts the node out
        out = end.status == 0 or end.status >= 500
        self._attempt_failed(
            "node_refused", f"refused by node {self.node_name}: {why}", why if out else None
        )

    def _attempt_failed(self, outcome: str, why: str, out_because: str | None) -> None:
        """One node did not take the connection: put it out of service (``out_because``) and
        try the next candidate while the ingress deadline allows, else close."""
        end, self.node_end = self.node_end, None
        if end is not None and end.transport is not None:
            end.transport.abortConnection()
        now = self.factory.reactor.seconds()
        if out_because is not None:
            self.factory.node_failed(self.node_name, out_because)
        self.tried.append(why)
        if self.candidates and now < self.deadline:
            self.factory.count("failover")
            log.debug("{target}: {why}; trying the next node", target=self.target, why=why)
            self._next_attempt()
            return
        self._count(outcome)
        if len(self.tried) > 1:
            why = "no node took it: " + "; ".join(self.tried)
        self._close(why, quiet=outcome != "node_refused")

    def _accepted(self, node_end: IngressClientEnd) -> None:
        if self.state is not State.INGRESS or node_end is not self.node_end:
            node_end.transport.abortConnection()
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self.state = State.SPLICED
        self._count("spliced")
        self.factory.node_took(self.node_name)
        self.holding = self.node_name
        node_end.transport.write(self.parser.raw)  # the ClientHello, exactly as received
        self.parser = ClientHelloParser()  # drop the buffered copy
        splice.join(self, node_end)
        self.transport.resumeProducing()
        self._timer = self.factory.reactor.callLater(self.factory.idle_timeout, self._idle)
        node_end.on_activity = self._touch

    def _touch(self) -> None:
        self.last_activity = self.factory.reactor.seconds()

    def _idle(self) -> None:
        self._timer = None
        reactor = self.factory.reactor
        quiet = reactor.seconds() - self.last_activity
        if quiet >= self.factory.idle_timeout:
            self._count("idle_closed")
            self._close("idle")
        else:
            self._timer = reactor.callLater(self.factory.idle_timeout - quiet, self._idle)


class PublicFactory(protocol.Factory):
    noisy = False  # no "Starting factory" line per listener

    def __init__(
        self,
        *,
        reactor: Any,
        routes: Routes,
        node_endpoint: Callable[[str, int], IStreamClientEndpoint],
        public_port: int,
        client_hello_timeout: float,
        idle_timeout: float,
        limits: ConnectionLimits,
        ingress_timeout: float = 5.0,
        why_unreachable: Callable[[str], str | None] = lambda node: None,
        on_finished: Callable[[PublicConnection], None] | None = None,
        fallback: FallbackAcceptor | None = None,
        balancer: Balancer | None = None,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        """``ingress_timeout``: connect to a node and get its answer within this long, every
        attempt included; ``attempt_timeout``: one attempt, when another node could take over;
        ``why_unreachable(node)``: what the overlay knows (e.g. no WireGuard session);
        ``balancer``: the order of a pool's nodes and their health (shared by all ports)."""
        self.reactor = reactor
        self.routes = routes
        self.node_endpoint = node_endpoint
        self.public_port = public_port
        self.client_hello_timeout = client_hello_timeout
        self.idle_timeout = idle_timeout
        self.limits = limits
        self.ingress_timeout = ingress_timeout
        self.why_unreachable = why_unreachable
        self.on_finished = on_finished  # the access log and metrics (relay/observe.py)
        self.fallback = fallback  # nodes' TCP fallback links (ALPN funnel-wg/1), if enabled
        self.balancer = balancer or Balancer(routes, Health())
        self.attempt_timeout = attempt_timeout
        self._unreachable_logged: dict[str, float] = {}

    def buildProtocol(self, addr: Any) -> PublicConnection:
        return PublicConnection(self, self.public_port)

    def count(self, what: str) -> None:
        self.limits.count(what)

    def node_unreachable(self, node: str, why: str) -> None:
        """Log a silent node once per ``UNREACHABLE_LOG_INTERVAL``, not once per visitor."""
        now = self.reactor.seconds()
        last = self._unreachable_logged.get(node)
        if last is not None and now - last < UNREACHABLE_LOG_INTERVAL:
            return
        self._unreachable_logged[node] = now
        log.warn("node {node} unreachable: {why}", node=node, why=why)

    def node_failed(self, node: str, why: str) -> None:
        if self.balancer.health.failed(node, why, self.reactor.seconds()):
            log.warn("node {node} out of service: {why}", node=node, why=why)

    def node_took(self, node: str) -> None:
        self.balancer.opened(node)
        if self.balancer.health.succeeded(node, self.reactor.seconds()):
            log.info("node {node} back in service", node=node)

    def admit(self, conn: PublicConnection) -> bool:
        return self.limits.admit(conn)

    def release(self, conn: PublicConnection) -> None:
        self.limits.release(conn)


class ConnectionLimits:
    """Connection counts shared by all public ports; also the relay's counters."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.open: set[PublicConnection] = set()
        self.per_ip: dict[str, int] = {}
        self.counters: dict[str, int] = {}
        self.accepting = True
        self._drained: defer.Deferred[None] | None = None

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def admit(self, conn: PublicConnection) -> bool:
        ip = conn.source[0]
        if not self.accepting:
            self.count("refused_shutting_down")
            conn.outcome = "refused_shutting_down"
            return False
        if len(self.open) >= self.max_total:
            self.count("refused_max_connections")
            conn.outcome = "refused_max_connections"
            return False
        if self.per_ip.get(ip, 0) >= self.max_per_ip:
            self.count("refused_per_ip")
            conn.outcome = "refused_per_ip"
            return False
        self.open.add(conn)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        self.count("accepted")
        return True

    def release(self, conn: PublicConnection) -> None:
        if conn not in self.open:
            return
        self.open.discard(conn)
        ip = conn.source[0]
        left = self.per_ip.get(ip, 1) - 1
        if left:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)
        if self._drained is not None and not self._drained.called:
            self._close_links_when_alone()
            if not self.open:
                self._drained.callback(None)

    def drain(self, reactor: Any, timeout: float) -> defer.Deferred[None]:
        """Stop admitting; fire when every connection is gone, closing stragglers at timeout."""
        self.accepting = False
        if not self.open:
            return defer.succeed(None)
        self._drained = defer.Deferred()
        self._close_links_when_alone()

        def force() -> None:
            for conn in list(self.open):
                conn.transport.abortConnection()

        call = reactor.callLater(timeout, force)
        self._drained.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return self._drained

    def _close_links_when_alone(self) -> None:
        """Nodes' fallback links carry the connections being drained: they go last."""
        if self.open and all(conn.state is State.LINK for conn in self.open):
            for conn in list(self.open):
                conn.transport.abortConnection()
