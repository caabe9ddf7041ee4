"""Join two connections: what one side sends, the other receives, with backpressure.

Used by the node's ``tcp-forward`` and ``tls-terminated-tcp`` handlers and by the relay.
Each transport is registered as the other's streaming producer, so a slow reader pauses the
fast writer's source instead of filling a buffer. An end of stream is passed on as a half-close
where the transport supports it; when both directions are done, or either side is lost, both
are closed.

A loss is passed on as what it was: a side that was reset (or timed out) aborts the other, so
a reset travels end to end at once; a side that closed cleanly closes the other, and that
close is bounded (:mod:`.closing`): a far side that reads nothing cannot keep it forever.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .closing import close_within
from .sendnow import write_now

MAX_EARLY_BYTES = 256 * 1024  # held for the other side while it is still connecting


class SpliceCounters:
    """Bytes moved each way, for logs and status."""

    def __init__(self) -> None:
        self.a_to_b = 0
        self.b_to_a = 0


@implementer(IHalfCloseableProtocol)
class SpliceEnd(protocol.Protocol):
    """One end of a splice. Ends are joined with :func:`join` once both are connected."""

    transport: Any  # a TCP-like transport: also a producer and a consumer

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.other: SpliceEnd | None = None
        self.early: list[bytes] = []
        self.early_bytes = 0
        self.read_done = False
        self.write_done = False
        self.lost = False
        self.received = 0
        self.on_lost: Any = None  # called once with the reason when this end is gone
        self.on_activity: Any = None  # called on every chunk (idle timeouts)
        self.clock: Any = None  # for the close bound (None: the global reactor)
        self._abort_call: Any = None  # a close in progress: abort at this call

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.on_activity is not None:
            self.on_activity()
        if self.other is not None and self.other.transport is not None:
            write_now(self.other.transport, data)
            return
        self.early.append(data)
        self.early_bytes += len(data)
        if self.early_bytes > MAX_EARLY_BYTES:
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        self.read_done = True
        other = self.other
        if other is None:
            return
        if other.transport is not None and not other.lost:
            # looked up on the class: a TLS wrapper has no half-close of its own, and its
            # attribute lookup would fall through to the TCP connection underneath
            close_write = getattr(type(other.transport), "loseWriteConnection", None)
            if close_write is not None:
                close_write(other.transport)
                other.write_done = True
            else:
                # TLS sends close_notify only once no producer is registered
                other.transport.unregisterProducer()
                other.close()
        self._maybe_finish()

    def writeConnectionLost(self) -> None:
        self.write_done = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        other = self.other
        if other is not None and self.read_done and other.read_done:
            self.close()
            if other.transport is not None:
                other.close()

    def close(self) -> None:
        """Close this end's transport, within a bound."""
        if self.lost or self._abort_call is not None or self.transport is None:
            return
        self._abort_call = close_within(self.transport, self.clock)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        other = self.other
        if other is not None and other.transport is not None and not other.lost:
            other.transport.unregisterProducer()
            if reason.check(error.ConnectionDone) is not None:
                other.close()
            else:
                other.transport.abortConnection()  # a reset is passed on as one
        if self.on_lost is not None:
            callback, self.on_lost = self.on_lost, None
            callback(reason)


def join(a: SpliceEnd, b: SpliceEnd) -> None:
    """Start moving bytes between two connected ends (and anything they held early)."""
    a.other, b.other = b, a
    assert a.transport is not None and b.transport is not None
    a.transport.registerProducer(b.transport, True)
    b.transport.registerProducer(a.transport, True)
    for end, other in ((a, b), (b, a)):
        early, end.early = end.early, []
        if end.early_bytes > MAX_EARLY_BYTES:
            end.transport.resumeProducing()
        end.early_bytes = 0
        for chunk in early:
            other.transport.write(chunk)
        if end.read_done:
            end.readConnectionLost()
        if end.lost:
            end.connectionLost(Failure(protocol.connectionDone.value))
