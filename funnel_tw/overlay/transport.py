"""Overlay TCP connections as Twisted transports.

:class:`OverlayTCPTransport` wraps one sans-IO :class:`~funnel_tw.netstack.tcp.Connection` so
any Twisted protocol runs on it unchanged: ``ITCPTransport`` (with overlay addresses),
``IPushProducer`` (pausing reads closes the TCP window, so a slow consumer slows the sender) and
``IConsumer`` (a registered producer is paused while the send buffer is above its high-water
mark and resumed when it drains). Half-close reaches protocols that provide
``IHalfCloseableProtocol``.

No flow outlives its peer: a reset reaches the protocol as ``connectionLost`` at once, paused
or not; data that makes no progress for ``USER_TIMEOUT`` seconds (a vanished peer, or one
that advertises a zero window forever) aborts the connection; and after ``loseConnection``
the connection is reset if it makes no progress for the stack's orphan timeout, so a close
never waits forever on data that can never be sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address
from typing import Any, Protocol

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..netstack.tcp import Connection, State

log = Logger()

# The registered producer is paused above ``conn.send_limit`` unacknowledged bytes (2 MiB, or
# twice the congestion window up to tcp-send-buffer-max, 12 MiB: tcp/send.py) and resumed below
# 3/4 of it (DRAINED).
# Data held this long without the peer acknowledging any of it (or behind a zero window)
# aborts the connection: generous for a reader that pauses, finite for one that is gone.
USER_TIMEOUT = 300.0
# The most one dataReceived call is given (a socket transport's read size).
READ_CHUNK = 65536


class TransportOwner(Protocol):
    """What a transport needs from whoever runs its connection's stack (no back-pointer to it)."""

    @property
    def reactor(self) -> IReactorTime: ...

    def flush_soon(self) -> None:
        """Send what the stack has for the wire at the end of this reactor pass."""
        ...

    def dispatch_and_flush(self) -> None:
        """Run the stack now: deliver its events, send what it has for the wire."""
        ...


def to_address(pair: tuple[bytes, int]) -> IPv4Address | IPv6Address:
    host = str(ip_address(pair[0]))
    if len(pair[0]) == 4:
        return IPv4Address("TCP", host, pair[1])
    return IPv6Address("TCP", host, pair[1])


@implementer(ITCPTransport, IPushProducer, IConsumer)
class OverlayTCPTransport:
    closes_bounded = True  # loseConnection resets a close that makes no progress (web.closing)

    def __init__(self, owner: TransportOwner, conn: Connection, protocol: IProtocol) -> None:
        self.owner = owner
        self.conn = conn
        self.protocol = protocol
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self._write_closed = False
        self._read_closed = False
        self.producer: Any = None
        self._streaming = True
        self._producer_paused = False
        self._tcp_nodelay = True
        self._pull_scheduled = False
        self.bytes_sent = 0  # for the node's access log (a non-HTTP flow's bytes_sent)
        conn.app = self
        conn.user_timeout = USER_TIMEOUT

    # --- events from the stack -----------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        rest = self._take(data)
        if rest:
            self.conn.hold(rest)

    def _take(self, data: bytes) -> bytes:
        """Deliver at most ``READ_CHUNK`` at a time and nothing while paused, as a socket
        read would: a filled hole can hand over megabytes in order at once, and a reader
        that pauses (its consumer is full) must not get them, or it buffers them itself.
        Returns what the reader did not take (it paused), for the connection to hold."""
        if self.disconnecting or self._read_closed:
            return b""  # the application said it wants no more
        conn = self.conn
        if conn.reading_paused:
            return data
        if len(data) <= READ_CHUNK:
            self.protocol.dataReceived(data)
            return b""
        view = memoryview(data)
        for start in range(0, len(data), READ_CHUNK):
            if self.disconnecting or self._read_closed:
                return b""
            if conn.reading_paused:
                return bytes(view[start:])
            self.protocol.dataReceived(bytes(view[start : start + READ_CHUNK]))
        return b""

    def _eof(self) -> None:
        self._read_closed = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.readConnectionLost()
        else:
            self.loseConnection()

    def _drained(self) -> None:
        if self.producer is not None and self._producer_paused:
            self._producer_paused = False
            self.producer.resumeProducing()

    def _pull(self) -> None:
        """Ask a pull (non-streaming) producer for more while there is room."""
        self._pull_scheduled = False
        if self.producer is None or self._streaming or self.disconnected:
            return
        if self.conn.over_send_limit():
            self._producer_paused = True  # the DRAINED event asks again
        else:
            self.producer.resumeProducing()

    def _closed(self, reason: str | None) -> None:
        if self.disconnected:
            return
        self.connected = False
        self.disconnected = True
        if self.producer is not None:
            producer, self.producer = self.producer, None
            try:
                producer.stopProducing()
            except Exception:
                log.failure("producer.stopProducing failed")
        if reason is None:
            failure = Failure(error.ConnectionDone())
        else:
            failure = Failure(error.ConnectionLost(reason))
        self.protocol.connectionLost(failure)

    # --- ITransport ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or self._write_closed or self.disconnected or not data:
            return
        self.conn.send(bytes(data))
        self.bytes_sent += len(data)
        self.owner.flush_soon()
        if self.producer is None or self._producer_paused:
            return
        if not self._streaming:
            if not self._pull_scheduled:
                self._pull_scheduled = True
                self.owner.reactor.callLater(0, self._pull)
        elif self.conn.over_send_limit():
            self._producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        # the application lets go: what it would not read is dropped, and a close that
        # makes no progress ends in a reset (the stack's orphan timeout)
        self.conn.orphan(self.owner.reactor.seconds())
        self.owner.flush_soon()

    def abortConnection(self) -> None:
        if self.disconnected:
            return
        self.disconnecting = True
        self.conn.abort()
        self.owner.flush_soon()

    def loseWriteConnection(self) -> None:
        if self._write_closed or self.disconnected:
            return
        self._write_closed = True
        self.conn.close()
        self.owner.flush_soon()

    # built once: twisted.web asks for both with every request (HTTP/2: every stream)
    _peer: IPv4Address | IPv6Address | None = None
    _host: IPv4Address | IPv6Address | None = None

    def getPeer(self) -> IPv4Address | IPv6Address:
        if self._peer is None:
            self._peer = to_address(self.conn.remote)
        return self._peer

    def getHost(self) -> IPv4Address | IPv6Address:
        if self._host is None:
            self._host = to_address(self.conn.local)
        return self._host

    # --- ITCPTransport options -----------------------------------------------------------------

    def getTcpNoDelay(self) -> bool:
        return self._tcp_nodelay

    def setTcpNoDelay(self, enabled: bool) -> None:
        # writes are coalesced per reactor pass and sent at once either way
        self._tcp_nodelay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.conn.keepalive_idle > 0

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.conn.set_keepalive(7200.0 if enabled else 0.0, self.owner.reactor.seconds())
        self.owner.flush_soon()  # reschedules the stack's timers

    # --- IPushProducer: the application pausing what we read ---------------------------------

    def pauseProducing(self) -> None:
        self.conn.pause_reading()

    def resumeProducing(self) -> None:
        if self.conn.state is State.CLOSED:
            return
        self.conn.resume_reading(self._take, READ_CHUNK)
        self.owner.dispatch_and_flush()

    def stopProducing(self) -> None:
        self.loseConnection()

    # --- IConsumer: a producer writing to us ---------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self._streaming = streaming
        self._producer_paused = False
        if not streaming:
            self._pull_scheduled = True
            self.owner.reactor.callLater(0, self._pull)

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False

    @staticmethod
    def address_of(pair: tuple[bytes, int]) -> IPv4Address | IPv6Address:
        return to_address(pair)

    def __repr__(self) -> str:
        return f"<OverlayTCPTransport {self.getHost()} -> {self.getPeer()} {self.conn.state.value}>"
