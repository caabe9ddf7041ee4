"""WireGuard datagrams over a byte stream: the TCP fallback's framing and its link protocol.

Where UDP is blocked (hotel, corporate and some mobile networks), the node carries its WireGuard
datagrams to the relay inside one TLS-over-TCP connection to the relay's public port (as
Tailscale's DERP does). The datagrams stay WireGuard's: sealed end to end, authenticated by the
keys of both sides, so the TLS layer is only what middleboxes expect to see on port 443.

Framing: each datagram is a 2-byte big-endian length, then the datagram. A zero length or a
datagram larger than :data:`MAX_DATAGRAM` is a protocol error that closes the link; the reader
holds at most one partial frame, so memory per link is bounded whatever the peer sends.

A link keeps UDP's semantics on the way out: when the stream cannot take more (the transport
paused its producer), datagrams are dropped and counted rather than queued without bound;
WireGuard and the TCP inside it recover as they do from a lossy path.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from .udp import Address

ALPN = b"funnel-wg/1"
"""The ALPN protocol id a node offers to ask the relay's public port for the fallback."""
MAX_DATAGRAM = 65535 - 2
_LEN = struct.Struct("!H")
_ids = itertools.count(1)


class FramingError(ValueError):
    """The peer sent something that is not a stream of framed datagrams."""


class FrameReader:
    """Sans-IO: bytes in, whole datagrams out; at most one partial frame held."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            (n,) = _LEN.unpack_from(buffer, offset)
            if n == 0 or n > MAX_DATAGRAM:
                raise FramingError(f"frame length {n}")
            if end - offset - 2 < n:
                break
            out.append(buffer[offset + 2 : offset + 2 + n])
            offset += 2 + n
        self.buffer = buffer[offset:]
        return out


def frame(datagram: bytes) -> bytes:
    """One datagram as it goes on the stream."""
    if not 0 < len(datagram) <= MAX_DATAGRAM:
        raise ValueError(f"datagram of {len(datagram)} bytes cannot be framed")
    return _LEN.pack(len(datagram)) + datagram


def stream_address(label: str) -> Address:
    """A pseudo endpoint for a link: what WireGuard records as the peer's endpoint while the
    peer is reached through it. Port 0 and a ``tcp://`` host never name a real UDP address."""
    return (f"tcp://{label}#{next(_ids)}", 0)


def is_stream_address(address: Address) -> bool:
    return address[1] == 0 and address[0].startswith("tcp://")


def link_label(address: Address) -> str:
    """What a link's pseudo endpoint says in logs: the other end's host:port."""
    return address[0].removeprefix("tcp://").partition("#")[0]


@implementer(IPushProducer)
class StreamLink(protocol.Protocol):
    """One fallback stream: datagrams from it go to ``deliver``, :meth:`send` frames them out.

    ``on_open(link)`` and ``on_close(link, why)`` tell the owner (the tunnel's side of the
    link) when it can be used and when it is gone. A link without a datagram for ``idle``
    seconds is closed: both ends send WireGuard keepalives far more often than that.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        label: str,
        deliver: Callable[[list[bytes], Address], None],
        on_open: Callable[[StreamLink], None],
        on_close: Callable[[StreamLink, str], None],
        idle: float = 180.0,
    ) -> None:
        self.reactor = reactor
        self.address = stream_address(label)
        self.deliver = deliver
        self.on_open = on_open
        self.on_close = on_close
        self.idle = idle
        self.reader = FrameReader()
        self.paused = False
        self.open = False
        self.rx_datagrams = self.tx_datagrams = self.dropped = 0
        self.last_received = 0.0
        self._idle_call: IDelayedCall | None = None
        self._close_reason: str | None = None

    transport: Any  # ITCPTransport and IConsumer: the TLS layer over the TCP connection

    def connectionMade(self) -> None:
        self.open = True
        self.last_received = self.reactor.seconds()
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)  # datagrams: each goes now, not after an ACK of the last (Nagle)
        self.transport.registerProducer(self, True)
        self._arm_idle()
        self.on_open(self)

    def _arm_idle(self) -> None:
        self._idle_call = self.reactor.callLater(self.idle, self._check_idle)

    def _check_idle(self) -> None:
        quiet = self.reactor.seconds() - self.last_received
        if quiet >= self.idle:
            self._idle_call = None
            self.close(f"no datagram for {quiet:.0f} s")
            return
        self._idle_call = self.reactor.callLater(self.idle - quiet, self._check_idle)

    def dataReceived(self, data: bytes) -> None:
        try:
            datagrams = self.reader.feed(data)
        except FramingError as e:
            self.close(f"not a framed datagram stream ({e})")
            return
        if datagrams:
            self.last_received = self.reactor.seconds()
            self.rx_datagrams += len(datagrams)
            self.deliver(datagrams, self.address)

    def send(self, datagrams: list[bytes]) -> None:
        """Queue datagrams for the peer; dropped (and counted) while the stream is full."""
        if not self.open or self.paused:
            self.dropped += len(datagrams)
            return
        self.tx_datagrams += len(datagrams)
        self.transport.writeSequence([frame(d) for d in datagrams])

    def close(self, why: str) -> None:
        if self.transport is not None and self.open:
            self._close_reason = why
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        was_open, self.open = self.open, False
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if was_open:
            why = self._close_reason or reason.getErrorMessage()
            self.on_close(self, why)

    # IPushProducer: the transport says when its buffer is full
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True
