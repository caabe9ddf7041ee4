"""``network = userspace``: UDP <-> WireGuard Device <-> our own TCP/IP Stack, no privileges.

::

    protocols <-> OverlayTCPTransport <-> Stack <-> PacketFilter / Device <-- UDP --> peers
                  (transport.py)                    (this module: UserspaceOverlayInterface)

It provides :class:`~funnel_tw.overlay.interface.OverlayInterface`, and to its transports and
endpoints the narrow owners they need (:class:`~funnel_tw.overlay.transport.TransportOwner`,
:class:`~funnel_tw.overlay.endpoints.EndpointOwner`): flush soon, run the stack now, listen,
dial.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
)
from typing import Any

import attrs
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..config.model import TCP_DEFAULTS, TCPBuffers
from ..netstack import checksum, tcp
from ..netstack.events import Event
from ..netstack.icmp import Echo, echo_request
from ..netstack.stack import ECHO_REPLY, Stack
from ..turn import Soon, end_of_turn
from ..wireguard import transport_key
from ..wireguard.constants import DEFAULT, Constants
from ..wireguard.device import Peer
from .endpoints import OverlayClientEndpoint, OverlayServerEndpoint
from .interface import ConnectionKey, PeerSpec, PingTimeout, source_address
from .peers import build_device, build_filter, reconfigure_peers
from .transport import OverlayTCPTransport
from .tunnel import ITunnelReactor, Tunnel

log = Logger()
DATA = tcp.DATA
_NOTHING = object()


def _coalesced(events: list[tuple[Event, Any, Any]]) -> Iterator[tuple[Event, Any, Any]]:
    """The stack's events with each run of DATA for one connection joined into one: a batch
    of segments reaches the application as one read (what a kernel socket's reader gets),
    not one call per segment through every layer above. Order is kept; nothing else moves.
    (A run of one is that one bytes object: ``b"".join`` of one item returns it.)"""
    held: Any = _NOTHING  # the connection whose DATA is being gathered
    parts: list[bytes] = []
    for kind, conn, data in events:
        if kind == DATA and conn is held:
            parts.append(data)
            continue
        if held is not _NOTHING:
            yield DATA, held, b"".join(parts)
            held = _NOTHING
        if kind == DATA:
            held, parts = conn, [data]
        else:
            yield kind, conn, data
    if held is not _NOTHING:
        yield DATA, held, b"".join(parts)


def _worth_logging(count: int) -> bool:
    """The first ten of a kind of bug, then every thousandth: seen, not a flood."""
    return count <= 10 or count % 1000 == 0


def tcp_status(caps: TCPBuffers) -> dict[str, Any]:
    """The userspace stack in a status document: its caps (the tcp-* keys) and which
    checksum and WireGuard transport code it runs (``C``, or why it is the pure-Python one)."""
    return {
        **attrs.asdict(caps),
        "checksum": checksum.IMPLEMENTATION,
        "transport": transport_key.IMPLEMENTATION,
    }


class UserspaceOverlayInterface:
    """WireGuard on a UDP port with a TCP/IP stack (and ICMP echo) on ``addresses``.

    ``restricted`` maps peer names to the only TCP ports those peers may reach on our
    addresses (funnel-ingress peers reach the peerAPI and nothing else); every other packet
    from them is dropped and counted.
    """

    def __init__(
        self,
        reactor: ITunnelReactor,
        *,
        private_key: bytes,
        addresses: Sequence[IPv4Interface | IPv6Interface],
        peers: Sequence[PeerSpec],
        listen_port: int = 0,
        mtu: int = 1280,
        constants: Constants = DEFAULT,
        restricted: Mapping[str, frozenset[int]] | None = None,
        receive_buffer: int = tcp.RECEIVE_BUFFER,
        caps: TCPBuffers = TCP_DEFAULTS,
    ) -> None:
        self.reactor = reactor
        self.addresses = tuple(addresses)
        self.device = build_device(private_key, peers, mtu=mtu, constants=constants)
        self.listen_port = listen_port
        self.tunnel: Tunnel | None = None
        self.stack = Stack(
            [a.ip.packed for a in self.addresses],
            mtu=mtu,
            receive_buffer=receive_buffer,
            receive_buffer_max=caps.receive_buffer_max,
            send_buffer_max=caps.send_buffer_max,
            receive_memory=caps.memory,
            max_connections=caps.connections,
            path_memory=caps.path_memory,
            timestamps=caps.timestamps,
            congestion=caps.congestion,
        )
        self.filter = build_filter(self.device, restricted, self.stack.addresses)
        self.factories: dict[int, IProtocolFactory] = {}
        self.app_errors = 0  # protocols that raised on an overlay connection (each reset)
        self.stack_errors = 0  # packets the stack raised on (dropped); its connections: its own
        self._ping_ident = itertools.count(1)
        self._ping_waiters: dict[tuple[int, int], defer.Deferred[Echo]] = {}
        self._pending: dict[tcp.Connection, tuple[IProtocolFactory, defer.Deferred[IProtocol]]] = {}
        self._flush_call: Soon | None = None
        self._timer: IDelayedCall | None = None
        self._timer_at = float("inf")

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.tunnel = Tunnel(
            self.reactor,
            self.device,
            listen_port=self.listen_port,
            packet_handler=self._packet,
            batch_handler=self._after_batch,
        )
        self.tunnel.start()
        log.info(
            "userspace TCP/IP stack: checksum in {impl}, WireGuard transport in {transport}",
            impl=checksum.IMPLEMENTATION,
            transport=transport_key.IMPLEMENTATION,
        )

    def stop(self) -> None:
        for call in (self._flush_call, self._timer):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._timer = None
        self.stack.flush(self.reactor.seconds())  # owed ACKs (e.g. for a FIN) go out first
        for conn in list(self.stack.connections.values()):
            conn.abort()
        self._dispatch()
        if self.tunnel is not None:
            self._to_tunnel()
            self.tunnel.stop()
            self.tunnel = None

    @property
    def port(self) -> int:
        assert self.tunnel is not None
        return self.tunnel.port

    # --- packets -------------------------------------------------------------------------------

    def _packet(self, packet: bytes, peer: Peer) -> None:
        if self.filter.allows(packet, peer):
            try:
                self.stack.receive(packet, self.reactor.seconds())
            except Exception:
                # a bug, not an input the stack expects (those are counted drops): this packet
                # is lost, the rest of its batch is not
                self.stack_errors += 1
                self._stack_failed(Failure(), f"a packet from {peer.name}; dropped")

    def _stack_error_count(self) -> int:
        """Packets the stack raised on, and its connections that raised (each reset)."""
        return self.stack_errors + self.stack.counters.get("tcp_internal_errors", 0)

    def _stack_failed(self, failure: Failure, what: str) -> None:
        n = self._stack_error_count()
        if _worth_logging(n):
            log.failure("the TCP/IP stack failed on {what} ({n} so far)", failure, what=what, n=n)

    def _after_batch(self) -> None:
        """After a run of packets from the tunnel: wake the applications, answer in bulk."""
        now = self.reactor.seconds()
        self._dispatch()
        self.stack.flush(now)
        self._dispatch()
        self._to_tunnel(now, direct=True)
        self._schedule()

    def _to_tunnel(self, now: float | None = None, direct: bool = False) -> None:
        if not self.stack.outgoing:
            return
        packets, self.stack.outgoing = self.stack.outgoing, []
        if now is None:
            now = self.reactor.seconds()
        self.device.send_packets(packets, now)
        if not direct and self.tunnel is not None:
            self.tunnel.after_work()

    def flush_soon(self) -> None:
        """Applications wrote: send at the end of this reactor pass, once for all of them."""
        if self._flush_call is None:
            self._flush_call = end_of_turn(self.reactor).soon(self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        self.dispatch_and_flush()

    def dispatch_and_flush(self) -> None:
        now = self.reactor.seconds()
        self._dispatch()
        self.stack.flush(now)
        self._dispatch()
        self._to_tunnel(now)
        self._schedule()

    def _dispatch(self) -> None:
        """Hand the stack's events to the connections' protocols. A protocol that raises
        costs its own connection only (logged, counted, reset), as a socket's would: the
        events of the other connections in the same batch still go out."""
        stack = self.stack
        if stack.failures:  # connections that raised in the stack (each reset there)
            failures, stack.failures = stack.failures, []
            for e in failures:
                self._stack_failed(Failure(e, type(e), e.__traceback__), "a connection; reset")
        while stack.events:
            events, stack.events = stack.events, []
            pending = _coalesced(events)
            while True:
                try:
                    for kind, conn, data in pending:
                        if kind == DATA:  # the hot one, without a call
                            app = conn.app  # None: refused or aborted before an app took it
                            if app is not None:
                                app._data(data)
                        else:
                            self._event(kind, conn, data)
                    break
                except Exception:
                    self.app_errors += 1
                    if _worth_logging(self.app_errors):  # a client may find a handler's bug
                        log.failure(
                            "an application failed on an overlay connection ({n} so far); "
                            "resetting it",
                            n=self.app_errors,
                        )
                    if conn is None:  # not a connection's event (ECHO_REPLY)
                        continue
                    if conn.app is not None:
                        conn.app.abortConnection()  # and it takes no more of this batch
                    else:
                        conn.abort()

    def _event(self, kind: Event, conn: Any, data: Any) -> None:
        if kind == tcp.ACCEPTED:
            self._accepted(conn)
        elif kind == tcp.CONNECTED:
            self._connected(conn)
        elif kind == tcp.EOF:
            if conn.app is not None:
                conn.app._eof()
        elif kind == tcp.CLOSED:
            self._closed(conn, data)
        elif kind == tcp.DRAINED:
            if conn.app is not None:
                conn.app._drained()
        elif kind == ECHO_REPLY:
            waiter = self._ping_waiters.pop((data.ident, data.sequence), None)
            if waiter is not None:
                waiter.callback(data)

    def _attach(self, conn: tcp.Connection, factory: IProtocolFactory) -> IProtocol | None:
        protocol = factory.buildProtocol(OverlayTCPTransport.address_of(conn.remote))
        if protocol is None:
            conn.abort()
            return None
        transport = OverlayTCPTransport(self, conn, protocol)
        protocol.makeConnection(transport)
        return protocol

    def _accepted(self, conn: tcp.Connection) -> None:
        factory = self.factories.get(conn.local[1])
        if factory is None:
            conn.abort()
            return
        self._attach(conn, factory)

    def _connected(self, conn: tcp.Connection) -> None:
        pending = self._pending.pop(conn, None)
        if pending is None:
            conn.abort()
            return
        factory, result = pending
        try:
            protocol = self._attach(conn, factory)
        except Exception:
            conn.abort()
            result.errback()
            return
        if protocol is None:
            result.errback(error.ConnectError("factory refused the connection"))
        else:
            result.callback(protocol)

    def _closed(self, conn: tcp.Connection, reason: str | None) -> None:
        pending = self._pending.pop(conn, None)
        if pending is not None:
            _, result = pending
            if reason == "connection refused":
                result.errback(error.ConnectionRefusedError(reason))
            elif reason == "connection timed out":
                result.errback(error.TimeoutError(reason))
            else:
                result.errback(error.ConnectError(reason or "closed"))
            return
        if conn.app is not None:
            conn.app._closed(reason)

    # --- timers --------------------------------------------------------------------------------

    def _schedule(self) -> None:
        deadline = self.stack.next_deadline()
        if deadline is None or deadline >= self._timer_at:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.reactor.callLater(
            max(0.0, deadline - self.reactor.seconds()), self._fire
        )

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.stack.tick(self.reactor.seconds())
        self.dispatch_and_flush()

    # --- TCP for the layers above --------------------------------------------------------------

    def server_endpoint(self, port: int) -> OverlayServerEndpoint:
        return OverlayServerEndpoint(self, port)

    def client_endpoint(self, host: str, port: int, timeout: float = 30.0) -> OverlayClientEndpoint:
        return OverlayClientEndpoint(self, host, port, timeout)

    def add_listener(self, port: int, factory: IProtocolFactory) -> None:
        if port in self.factories:
            raise error.CannotListenError("overlay", port, OSError("port in use"))
        self.factories[port] = factory
        self.stack.listen(port)

    def remove_listener(self, port: int) -> None:
        self.factories.pop(port, None)
        self.stack.unlisten(port)

    def connect_tcp(
        self, host: str, port: int, factory: IProtocolFactory, timeout: float = 30.0
    ) -> defer.Deferred[IProtocol]:
        """Dial ``host:port`` over the overlay; fires with the connected protocol."""
        try:
            dst = ip_address(host)
            src = self.source_for(dst)
            conn = self.stack.connect(src, dst.packed, port, self.reactor.seconds())
        except (ValueError, OSError) as e:
            return defer.fail(error.ConnectError(str(e)))
        result: defer.Deferred[IProtocol] = defer.Deferred()
        self._pending[conn] = (factory, result)

        def expire() -> None:
            if conn in self._pending:
                conn.abort()
                self._pending.pop(conn)
                result.errback(error.TimeoutError(f"connecting to {host}:{port}"))
                self.dispatch_and_flush()

        def settled(outcome: IProtocol | Failure) -> IProtocol | Failure:
            if call.active():
                call.cancel()
            return outcome

        call = self.reactor.callLater(timeout, expire)
        result.addBoth(settled)
        self._to_tunnel()
        self._schedule()
        return result

    # --- ICMP ----------------------------------------------------------------------------------

    def source_for(self, dst: IPv4Address | IPv6Address) -> bytes:
        return source_address(self.addresses, dst)

    def ping(
        self, dst: IPv4Address | IPv6Address, seq: int, timeout: float = 2.0, size: int = 56
    ) -> defer.Deferred[float]:
        """Echo ``dst``; fires with the round-trip time or fails with PingTimeout."""
        started = self.reactor.seconds()
        ident = next(self._ping_ident) & 0xFFFF
        waiter: defer.Deferred[Echo] = defer.Deferred()
        self._ping_waiters[(ident, seq)] = waiter
        result: defer.Deferred[float] = defer.Deferred()

        def replied(_: Echo) -> None:
            if call.active():
                call.cancel()
            result.callback(self.reactor.seconds() - started)

        def expired() -> None:
            self._ping_waiters.pop((ident, seq), None)
            result.errback(PingTimeout(f"no reply from {dst} seq {seq}"))

        call = self.reactor.callLater(timeout, expired)
        waiter.addCallback(replied)
        self.stack.outgoing.append(
            echo_request(self.source_for(dst), dst.packed, ident, seq, bytes(size))
        )
        self._to_tunnel()
        return result

    def reconfigure_peers(
        self,
        *,
        remove: Sequence[str],
        add: Sequence[PeerSpec],
        update: Sequence[tuple[PeerSpec, PeerSpec]],
        restricted: Mapping[str, frozenset[int]],
    ) -> None:
        """A reload's peer changes (overlay/peers.py)."""
        reconfigure_peers(
            self.device,
            self.filter,
            self.tunnel,
            remove=remove,
            add=add,
            update=update,
            restricted=restricted,
            now=self.reactor.seconds(),
        )

    def tcp_connections(self) -> list[ConnectionKey]:
        return list(self.stack.connections)

    def stats(self) -> dict[str, int]:
        counters = self.device.stats()
        counters.update(self.stack.stats())
        counters.update(self.filter.stats())
        counters["app_errors"] = self.app_errors
        counters["stack_errors"] = self._stack_error_count()
        if self.tunnel is not None:
            counters["udp_send_errors"] = self.tunnel.udp.send_errors
        return counters
